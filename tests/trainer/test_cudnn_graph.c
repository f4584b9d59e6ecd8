/* test_cudnn_graph.c - trainer/cuda/cudnn_graph.h without a device: the
 * descriptors and one-operation graphs of a few 2-D and 3-D convolutions
 * (every operation, beta 0 and 1, float and bf16 storage) finalize, and
 * cuDNN's heuristics answer for each (cg_self_test). Plans need a device:
 * the device check (trainer_gpu_check, COEMU_CUDNN_API=graph) and
 * tests/trainer/cudnn_engine_probe.c run them. */
#include <stdio.h>
#include <string.h>

#include "trainer/cuda/cudnn_graph.h"

int main(int argc, char **argv) {
  const int verbose = argc > 1 && !strcmp(argv[1], "--verbose");
  printf("cudnn-graph: cuDNN %zu (header %d)\n", cudnnGetVersion(), CUDNN_VERSION);
  return cg_self_test(stdout, verbose) ? 1 : 0;
}

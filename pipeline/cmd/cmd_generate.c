/* cmd_generate.c - `coemu generate [JOB.yaml] --out DIR`: the dataset pipeline
 * (generate.c) with the real producer (producer.c: sampler + LTE solver). */
#include "pipeline/cmd/commands.h"
#include "pipeline/generate/generate.h"
#include "pipeline/generate/producer.h"

int cmd_generate(int argc, char **argv) {
  return generate_main("generate", argc, argv, producer_open);
}

/* cmd_generate.c - `coemu generate [JOB.yaml] --out DIR`: the dataset pipeline
 * (generate.c) with the real producer (producer.c: sampler + LTE solver). */
#include "commands.h"
#include "generate.h"
#include "producer.h"

int cmd_generate(int argc, char **argv) {
  return generate_main("generate", argc, argv, producer_open);
}

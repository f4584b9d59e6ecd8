/* fuzz_job.c - libFuzzer target: the parsers of the YAML files users write
 * by hand (generate jobs, training jobs, AMRVAC units sidecars) on
 * arbitrary text.
 *
 * Each input goes through job_parse (schemas/job.yaml) and train_job_parse
 * (schemas/train.yaml): libyaml, the tree, the schema's validation and
 * defaults, then the typed fields; and through units_parse (docs/
 * sidecar.md), whose accepted units must give finite positive scales.
 * Built as a fuzzer with -Dfuzz=true and clang (tests/meson.build,
 * fuzz_targets) and run by `bash scripts/fuzz.sh 300 job`.
 * Without -DCOEMU_LIBFUZZER, tests/fuzz_main.h gives it a main() that runs
 * the seeds (the .yaml files of jobs/, the sidecars of tests/data/amrvac/
 * and every prefix of them): the test pipeline_fuzz_job_seeds. Any input is parsed or refused with a message;
 * an accepted generate job has a consistent shape. Paths resolve against a
 * folder that does not exist, so an amrvac glob matches nothing unless it
 * is absolute. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "fuzz_main.h"
#include "pipeline/job/job.h"
#include "pipeline/job/trainjob.h"
#include "rotate/units.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ce_set_alloc_limit((size_t)256 << 20);
  const char *dir = "/nonexistent-coemu-fuzz";
  ce_err_clear();
  job j;
  if (job_parse("fuzz.yaml", (const char *)data, size, dir, &j) < 0) {
    if (!ce_err_msg()[0]) abort(); /* a refusal must say why */
  } else {
    if (j.n_models < 0 || j.directions < 1 || j.nf < 1) abort();
    if (job_samples(&j) < 0) abort();
    job_free(&j);
  }
  ce_err_clear();
  train_job t;
  if (train_job_parse("fuzz-train.yaml", (const char *)data, size, dir, &t) < 0) {
    if (!ce_err_msg()[0]) abort();
  } else {
    train_job_free(&t);
  }
  ce_err_clear();
  units u;
  if (units_parse((const char *)data, size, "fuzz.units.yaml", &u) < 0) {
    if (!ce_err_msg()[0]) abort();
  } else {
    units_si si;
    units_scales(&u, &si);
    const double sc[5] = {si.length, si.density, si.velocity, si.pressure, si.n_h_per_rho};
    for (int i = 0; i < 5; i++)
      if (!(isfinite(sc[i]) && sc[i] > 0)) abort(); /* accepted units must be usable */
  }
  return 0;
}

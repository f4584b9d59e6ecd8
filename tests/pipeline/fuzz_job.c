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
 * and every prefix of them): the test pipeline_fuzz_job_seeds. Any input
 * is parsed or refused with a message; an accepted generate job has a
 * consistent shape, positive finite channel frequencies, its splits and its
 * estimate. Paths resolve against a folder that does not exist, so an
 * amrvac glob matches nothing unless it is absolute. */
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
    if (job_samples(&j) < 0 || job_samples(&j) > JOB_MAX_SAMPLES) abort();
    /* what generate and --check compute from an accepted job before any
     * input is read: the channels, the splits, the estimate */
    double *nu = malloc((size_t)j.nf * sizeof *nu);
    if (!nu) abort();
    job_frequencies(&j, 230.538e9, nu);
    for (int f = 0; f < j.nf; f++)
      if (!(isfinite(nu[f]) && nu[f] > 0)) abort();
    free(nu);
    ce_err_clear();
    if (job_train_samples(&j) < 0 && !ce_err_msg()[0]) abort();
    job_estimate e;
    job_estimate_of(&j, &e);
    if (e.samples != job_samples(&j) || !(e.core_seconds >= 0) || !(e.dataset_bytes >= 0)) abort();
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

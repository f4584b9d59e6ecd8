/* fuzz_lamda.c - libFuzzer target: the LAMDA parser on arbitrary text.
 *
 * Users bring their own molecule files (line.lamda in jobs, coemu nlte), so
 * the parser meets hand-edited and truncated text. Built as a fuzzer with
 * -Dfuzz=true and clang (tests/meson.build, fuzz_targets) and run by
 * `bash scripts/fuzz.sh 300 lamda`.
 * Without -DCOEMU_LIBFUZZER, tests/fuzz_main.h gives it a main() that runs
 * the seeds (the .dat files of tests/data/lamda/ and every prefix of them):
 * the test solver_fuzz_lamda_seeds. Any input is parsed or refused with a message;
 * what is accepted must be usable: finite values in their ranges (the
 * collision temperatures increasing), every transition's label and check,
 * the lookup of each line's own levels. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "fuzz_main.h"
#include "solver/lamda.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ce_set_alloc_limit((size_t)256 << 20);
  ce_err_clear();
  lamda_molecule m;
  memset(&m, 0xA5, sizeof m); /* lamda_parse must not read what it did not set */
  if (lamda_parse("fuzz.dat", (const char *)data, size, &m) < 0) {
    if (!ce_err_msg()[0]) abort(); /* a refusal must say why */
    return 0;
  }
  if (m.nlev < 1 || m.nline < 0 || m.npart < 0 || !(isfinite(m.weight) && m.weight > 0)) abort();
  for (int i = 0; i < m.nlev; i++)
    if (!(isfinite(m.levels[i].energy_cm) && isfinite(m.levels[i].weight) && m.levels[i].weight > 0))
      abort();
  char label[160];
  for (int t = 1; t <= m.nline; t++) {
    const lamda_line *l = &m.lines[t - 1];
    if (l->upper < 1 || l->upper > m.nlev || l->lower < 1 || l->lower > m.nlev) abort();
    if (!(isfinite(l->A) && l->A > 0 && isfinite(l->freq_ghz) && l->freq_ghz > 0)) abort();
    if (!(m.levels[l->upper - 1].energy_cm > m.levels[l->lower - 1].energy_cm)) abort();
    if (lamda_check_transition(&m, t) < 0) abort();
    lamda_transition_label(&m, t, label, sizeof label);
    if (!memchr(label, '\0', sizeof label)) abort();
    int found = lamda_find_transition(&m, l->upper, l->lower);
    if (found < 1 || found > m.nline) abort();
  }
  ce_err_clear();
  if (lamda_check_transition(&m, m.nline + 1) == 0 || !ce_err_msg()[0]) abort();
  for (int p = 0; p < m.npart; p++) {
    const lamda_partner *q = &m.partners[p];
    for (int j = 0; j < q->ntemp; j++) /* nlte.c interpolates in T between neighbours */
      if (!(isfinite(q->temps[j]) && q->temps[j] > 0 && (j == 0 || q->temps[j] > q->temps[j - 1])))
        abort();
    for (size_t r = 0; r < (size_t)q->ntrans * q->ntemp; r++)
      if (!(isfinite(q->rates[r]) && q->rates[r] >= 0)) abort();
    for (int k = 0; k < q->ntrans; k++)
      if (q->upper[k] < 1 || q->upper[k] > m.nlev || q->lower[k] < 1 || q->lower[k] > m.nlev)
        abort();
  }
  lamda_free(&m);
  return 0;
}

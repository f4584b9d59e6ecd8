/* test_job.c - job files against the schema, channel frequencies, splits,
 * shard round trip and corruption detection, work ranges.
 * Tolerances: the frequency grid's 1e-15 bounds two double roundings;
 * everything else is exact (parsed values, copied bytes). */
#include <hdf5.h>
#include <math.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "common/fsutil.h"
#include "rotate/sampler.h"
#include "pipeline/dataset/dataset.h"
#include "pipeline/dataset/h5util.h"
#include "pipeline/dataset/shard.h"
#include "pipeline/generate/generate.h"
#include "pipeline/generate/workplan.h"
#include "pipeline/job/job.h"

static const char *base =
    "inputs:\n"
    "  synth: {count: 10}\n"
    "line:\n"
    "  lamda: co.dat\n";

static int parse(const char *text, job *j) { return job_parse("t.yaml", text, strlen(text), "d", j); }

static void test_defaults(void) {
  job j;
  CHECK_OK(parse(base, &j));
  CHECK(j.n_models == 10 && j.directions == 32 && j.n == 64 && j.k == 2 && j.nf == 7);
  CHECK(j.edge == 0 && j.samples_per_shard == 64 && j.store_inputs && !j.inputs_f64);
  CHECK(!strcmp(j.sampler, "haar") && !strcmp(j.lamda, "d/co.dat"));
  CHECK_CLOSE(j.split_fraction[0], 0.8, 0, 0);
  CHECK(j.stats_compute == 1 && !strcmp(j.stats_split, "train") && !j.stats_drop_outliers && !j.has_stream);
  CHECK(!strcmp(j.model_names[3], "synth-1-000003"));
  CHECK(job_samples(&j) == 320);
  job_free(&j);
}

static void check_err(const char *extra, const char *msg) {
  char text[1024];
  snprintf(text, sizeof text, "%s%s", base, extra);
  job j;
  CHECK_ERR(parse(text, &j), msg);
}

/* sampling.reconstruction: auto, constant, linear; linear is refused with
 * coemunet_compat (which bins cell values), naming the key's place. */
static void test_reconstruction(void) {
  job j;
  CHECK_OK(parse(base, &j));
  CHECK(j.reconstruction == SAMPLER_LINEAR);
  /* the resolved linear is part of the fingerprint (an old dataset of the
   * same text, made with cell values, is not resumed with it) */
  CHECK(j.fingerprint != (uint32_t)crc32(0L, (const Bytef *)base, (uInt)strlen(base)));
  /* nor one begun by version 1 of linear's arithmetic (its tag, before
   * sampler_recon_version 2), nor by version 2 (the monomial form, before 3) */
  {
    static const char v1[] = "\n# sampling.reconstruction resolved: linear\n",
                      v2[] = "\n# sampling.reconstruction resolved: linear, sampler version 2\n";
    uint32_t f1 = (uint32_t)crc32(0L, (const Bytef *)base, (uInt)strlen(base)), f2 = f1;
    f1 = (uint32_t)crc32(f1, (const Bytef *)v1, (uInt)(sizeof v1 - 1));
    f2 = (uint32_t)crc32(f2, (const Bytef *)v2, (uInt)(sizeof v2 - 1));
    CHECK(sampler_recon_version(SAMPLER_LINEAR) == 3 && j.fingerprint != f1 && j.fingerprint != f2);
    CHECK(sampler_recon_version(SAMPLER_CONSTANT) == 1 && sampler_recon_version(SAMPLER_LIMITED) == 1);
  }
  job_free(&j);
  char text[1024];
  snprintf(text, sizeof text, "%ssampling: {reconstruction: constant}\n", base);
  CHECK_OK(parse(text, &j));
  CHECK(j.reconstruction == SAMPLER_CONSTANT);
  CHECK(j.fingerprint == (uint32_t)crc32(0L, (const Bytef *)text, (uInt)strlen(text)));
  job_free(&j);
  snprintf(text, sizeof text, "%ssampling: {reconstruction: limited}\n", base);
  CHECK_OK(parse(text, &j));
  CHECK(j.reconstruction == SAMPLER_LIMITED);
  job_free(&j);
  check_err("sampling: {reconstruction: cubic}\n", "sampling.reconstruction");
  const char *compat = "inputs: {synth: {count: 2}}\nline: {lamda: co.dat}\n"
                       "sampling: {coemunet_compat: true, reconstruction: %s}\n";
  snprintf(text, sizeof text, compat, "auto");
  CHECK_OK(parse(text, &j));
  CHECK(j.reconstruction == SAMPLER_CONSTANT);
  job_free(&j);
  snprintf(text, sizeof text, compat, "linear");
  CHECK_ERR(parse(text, &j), "t.yaml:3:");
  CHECK_ERR(parse(text, &j), "sampling.reconstruction: linear does not apply with "
                             "sampling.coemunet_compat");
  /* line.mode lvg: per-cell populations, so cell values too */
  const char *lvg = "inputs: {synth: {count: 2}}\nline: {lamda: co.dat, mode: lvg}\n"
                    "sampling: {reconstruction: %s}\n";
  snprintf(text, sizeof text, lvg, "auto");
  CHECK_OK(parse(text, &j));
  CHECK(j.reconstruction == SAMPLER_CONSTANT);
  job_free(&j);
  snprintf(text, sizeof text, lvg, "linear");
  CHECK_ERR(parse(text, &j), "linear does not apply with line.mode: lvg");
  snprintf(text, sizeof text, lvg, "limited");
  CHECK_ERR(parse(text, &j), "limited does not apply with line.mode: lvg");
}

static void test_errors(void) {
  check_err("sampling: {n: 1}\n", "t.yaml:5:");
  check_err("sampling: {n: 1}\n", "sampling.n: expected an integer in 2..1024, got '1'");
  check_err("sampling: {nn: 3}\n", "t.yaml:5:12: unknown key 'sampling.nn'");
  check_err("sampling: {n: 6.5}\n", "expected an integer");
  check_err("sampling: {n: '64'}\n", "expected an integer");
  check_err("sampling: {sampler: random}\n", "expected one of haar, faceon, lowdisc, coemunet");
  /* faceon is the identity for every direction: more than one would store
   * identical copies of each model's sample (the default directions too) */
  check_err("sampling: {directions: 3, sampler: faceon}\n",
            "t.yaml:5:24: sampling.directions: expected 1 with sampling.sampler faceon, got 3 (");
  check_err("sampling: {sampler: faceon}\n",
            "t.yaml:5:21: sampling.directions: expected 1 with sampling.sampler faceon, got 32 "
            "(the default)");
  {
    job fj;
    const char *t = "inputs:\n  synth: {count: 10}\nline:\n  lamda: co.dat\n"
                    "sampling: {directions: 1, sampler: faceon}\n";
    CHECK_OK(parse(t, &fj));
    CHECK(fj.directions == 1 && !strcmp(fj.sampler, "faceon"));
    job_free(&fj);
  }
  check_err("sampling: {edge: -1}\n", "sampling.edge: expected 'auto' or a length > 0");
  check_err("solver: {abs: 1}\n", "solver.abs: expected true or false");
  check_err("splits: {train: 0.5}\n", "expected train + validation + test = 1");
  check_err("stream: {credits: 3}\n", "stream: missing required key 'endpoint'");
  check_err("line:\n  lamda: x\n", "key 'line' appears twice");
  check_err("line2: 3\n", "unknown key 'line2'");
  check_err("statistics: {split: some}\n", "statistics.split");
  check_err("output: [1]\n", "output: expected a mapping, got a list");
  check_err("line2: *a\n", "aliases");
  check_err("sampling:\n\tn: 32\n", "YAML syntax error: found character that cannot start any "
                                     "token (a tab: YAML indents with spaces only)");
  job j;
  CHECK_ERR(parse("inputs: {synth: {count: 1}, amrvac: {glob: x}}\nline: {lamda: a}\n", &j),
            "exactly one of 'amrvac' or 'synth'");
  CHECK_ERR(parse("inputs: {amrvac: {glob: '/nonexistent/*.dat'}}\nline: {lamda: a}\n", &j),
            "no file matches");
  CHECK_ERR(parse("inputs: {synth: {count: 1}}\n", &j), "missing required key 'line'");
  /* a transition the LAMDA file lacks: at the transition's key, not the file's */
  CHECK_OK(parse("inputs: {synth: {count: 1}}\nline:\n  lamda: builtin:co.dat\n"
                 "  transition: 99\n", &j));
  CHECK_ERR(job_check_inputs(&j), "t.yaml:4:15: line.transition: 99, but builtin:co.dat has 40 "
                                  "transitions");
  job_free(&j);
  CHECK_ERR(parse("inputs: {synth: {count: 1}\n", &j), "t.yaml:");
  /* limits the tools enforce are the schema's, found before any work */
  CHECK_ERR(parse("inputs: {synth: {count: 1, levels: 7}}\nline: {lamda: a}\n", &j),
            "inputs.synth.levels: expected an integer in 1..6, got '7'");
  CHECK_ERR(parse("inputs: {synth: {count: 1}}\nline: {lamda: a, transition: 2147483648}\n", &j),
            "got '2147483648'");
  CHECK_ERR(parse("inputs: {synth: {count: 100000000}}\nsampling: {directions: 1000000}\n"
                  "line: {lamda: a}\n", &j),
            "inputs.synth.count x sampling.directions = 100000000 x 1000000 = 1e+14 samples");
}

static void test_channels(void) {
  job j;
  CHECK_OK(parse(base, &j));
  double f[7], nu0 = strtod("230.5380000", NULL) * 1e9;
  job_frequencies(&j, nu0, f);
  static const double ref[7] = {230537307907.2056, 230537538604.80374, 230537769302.40186,
                                230538000000.0, 230538230697.59814, 230538461395.19626,
                                230538692092.7944};
  for (int i = 0; i < 7; i++) CHECK(f[i] == ref[i]);
  job_free(&j);
  char text[512];
  snprintf(text, sizeof text, "%sline:\n  lamda: co.dat\n  channels: {mode: grid, vmin: -1000, vmax: 1000, count: 5}\n",
           "inputs:\n  synth: {count: 10}\n");
  CHECK_OK(parse(text, &j));
  CHECK(j.nf == 5 && j.velocities[1] == -500 && j.velocities[4] == 1000);
  job_frequencies(&j, 1e11, f);
  CHECK_CLOSE(f[4], 1e11 * (1 - 1000 / 299792458.0), 1e-15, 0);
  CHECK(f[0] > f[4]); /* positive velocity: redshift */
  job_free(&j);
  CHECK_ERR(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: list}}\n", &j),
            "needs 'velocities'");
  CHECK_OK(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: list, velocities: [5, -5.5]}}\n", &j));
  CHECK(j.nf == 2 && j.velocities[1] == -5.5);
  job_free(&j);
  /* /stats takes at most JOB_STATS_MAX_CHANNELS channels: more, with
   * statistics.compute on (the default), is refused when the job is read
   * (--check), not after the last shard; without /stats it is a job */
  CHECK_ERR(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: grid, count: 65}}\n", &j),
            "t.yaml:2:28: line.channels: 65 channels, but statistics.compute (on by default) takes at most 64");
  CHECK_OK(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: grid, count: 64}}\n", &j));
  CHECK(j.nf == 64);
  job_free(&j);
  CHECK_OK(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: grid, count: 300}}\n"
                 "statistics: {compute: false}\n", &j));
  CHECK(j.nf == 300);
  job_free(&j);
  /* a key of another mode is an error at its position, not ignored; the
   * defaults the schema fills in have no position and are never one */
  CHECK_ERR(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: coemunet, count: 15}}\n", &j),
            "t.yaml:2:52: line.channels.count: goes with mode grid, and the mode is coemunet");
  CHECK_ERR(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: list, velocities: [1], vmax: 3}}\n", &j),
            "t.yaml:2:64: line.channels.vmax: goes with mode grid, and the mode is list");
  CHECK_ERR(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: grid, velocities: [1]}}\n", &j),
            "line.channels.velocities: goes with mode list, and the mode is grid");
  CHECK_ERR(parse("inputs: {synth: {count: 2}}\nline: {lamda: a, channels: {mode: list, velocities: [5, -5, 5]}}\n", &j),
            "line.channels.velocities: entries 0 and 2 are both 5 m/s");
  /* a default's position is none: the schema's own line would read as one
   * in the job file */
  CHECK_OK(parse("inputs: {synth: {count: 2}}\nline: {lamda: a}\n", &j));
  CHECK(j.transition_line == 0);
  job_free(&j);
}

/* Every channel mode: the channel velocities and the frequencies job_frequencies
 * gives satisfy nu = nu0 (1 - v/c) (docs/physics.md), in the documented order:
 * coemunet frequency rising (velocity +900..-900 m/s, the paper's order), grid
 * velocity rising from vmin to vmax (frequency falling), list as given. The
 * bound: each side is at most 8 roundings of numbers <= nu0 (1 + 1e-5)
 * (torch.linspace's arithmetic on one side, nu0 * (1 - v/c) on the other), so
 * they differ by less than 16 u nu0, u = 2^-53. Before the sign fix the
 * coemunet velocities were -900..+900: off by 2 v nu0/c, some 1e6 Hz. */
static void test_channel_convention(void) {
  static const char *modes[3] = {
      "{mode: coemunet}", "{mode: grid, vmin: -1200, vmax: 900, count: 8}",
      "{mode: list, velocities: [250.5, -3000, 0, 1e5]}"};
  const double c = 299792458.0, u = 0x1p-53;
  for (int m = 0; m < 3; m++) {
    char text[512];
    snprintf(text, sizeof text, "inputs: {synth: {count: 2}}\nline: {lamda: a, channels: %s}\n", modes[m]);
    job j;
    CHECK_OK(parse(text, &j));
    double nu0 = strtod("230.5380000", NULL) * 1e9, f[16];
    CHECK(j.nf <= 16);
    job_frequencies(&j, nu0, f);
    for (int i = 0; i < j.nf; i++) {
      double want = nu0 * (1 - j.velocities[i] / c);
      CHECK_MSG(fabs(f[i] - want) <= 16 * u * nu0, "%s channel %d: nu %.17g, nu0 (1 - v/c) %.17g (v %g)",
                modes[m], i, f[i], want, j.velocities[i]);
    }
    for (int i = 1; i < j.nf && m < 2; i++) {
      if (m == 0) CHECK(f[i] > f[i - 1] && j.velocities[i] == j.velocities[i - 1] - 300);
      else CHECK(f[i] < f[i - 1] && j.velocities[i] > j.velocities[i - 1]);
    }
    if (m == 0) CHECK(j.velocities[0] == 900 && j.velocities[3] == 0 && j.velocities[6] == -900);
    if (m == 1) CHECK(j.velocities[0] == -1200 && j.velocities[7] == 900);
    if (m == 2) CHECK(j.velocities[0] == 250.5 && j.velocities[1] == -3000 && j.velocities[3] == 1e5);
    job_free(&j);
  }
}

static void test_splits(void) {
  job j;
  CHECK_OK(parse("inputs: {synth: {count: 1000}}\nline: {lamda: a}\nsplits: {train: 0.7, validation: 0.2, test: 0.1, seed: 5}\n", &j));
  uint8_t s1[1000], s2[1000];
  CHECK_OK(job_model_splits(&j, s1));
  CHECK_OK(job_model_splits(&j, s2));
  int c[3] = {0};
  for (int i = 0; i < 1000; i++) c[s1[i]]++;
  CHECK(c[0] == 700 && c[1] == 200 && c[2] == 100);
  CHECK(!memcmp(s1, s2, sizeof s1));
  int first_test = 0; /* a permutation, not the identity order */
  for (int i = 0; i < 100; i++) first_test += s1[i] == 2;
  CHECK(first_test > 0 && first_test < 100);
  job_free(&j);
}

static void test_job_files(void) {
  const char *root = getenv("COEMU_SOURCE_ROOT");
  const char *names[] = {"demo", "paper", "coemunet-compat"};
  for (int i = 0; i < 3; i++) {
    char p[4096];
    snprintf(p, sizeof p, "%s/jobs/%s.yaml", root ? root : ".", names[i]);
    job j;
    CHECK_OK(job_load(p, &j));
    if (i == 0) CHECK(j.n_models == 16 && j.directions == 32 && j.n == 64 && j.nf == 7);
    if (i == 1) CHECK(j.n_models == 10903 && j.directions == 200);
    if (i == 2) CHECK(j.n_models == 3 && j.coemunet_compat && !strcmp(j.sampler, "coemunet"));
    /* sampling.reconstruction auto: linear for new jobs, constant for compat */
    CHECK(j.reconstruction == (i == 2 ? SAMPLER_CONSTANT : SAMPLER_LINEAR));
    if (j.path) job_free(&j);
  }
  job j;
  CHECK_OK(job_parse("demo", job_demo_text, strlen(job_demo_text), ".", &j));
  job_free(&j);
  /* a training job given to coemu generate: the first unknown key, and what
   * the file is (its top-level keys are schemas/train.yaml's) */
  char p[4096];
  snprintf(p, sizeof p, "%s/jobs/train-demo.yaml", root ? root : ".");
  CHECK_ERR(job_load(p, &j), "unknown key 'seed'");
  CHECK(strstr(ce_err_msg(), "train-demo.yaml:") &&
        strstr(ce_err_msg(), "; this looks like a training job (top-level keys seed, ") &&
        strstr(ce_err_msg(), "): run it with coemu train"));
  /* a generate job with a stray key is not taken for a training job */
  check_err("seed: 3\n", "unknown key 'seed'");
  CHECK(!strstr(ce_err_msg(), "looks like"));
}

static void test_schema_doc(void) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  CHECK_OK(job_schema_markdown(f));
  fclose(f);
  CHECK(strstr(buf, "| `sampling.edge` | string | `auto` |") != NULL);
  CHECK(strstr(buf, "| `stream.endpoint` | string | required |") != NULL);
  CHECK(strstr(buf, "`line.channels.velocities` | list of float") != NULL);
  free(buf);
}

static void test_shard_roundtrip(void) {
  const char *dir = check_scratch("test_shard");
  char path[1100];
  snprintf(path, sizeof path, "%s/s.h5", dir);
  shard_layout lay = {.n = 4, .nf = 3, .store_inputs = 1, .gzip = 1, .job_fingerprint = 0xabcd};
  shard_writer *w;
  CHECK_OK(shard_open(&w, path, &lay, 10, 3));
  float in[3 * 64], tg[3 * 16];
  for (int s = 0; s < 3; s++) {
    for (int i = 0; i < 3 * 64; i++) in[i] = (float)(i * (s + 1));
    for (int i = 0; i < 48; i++) tg[i] = (float)(i + s) * 0.25f;
    double q[4] = {1, 0, 0, 0};
    CHECK_OK(shard_put(w, in, tg, 3, s, q, 0, 1));
  }
  CHECK(access(path, F_OK) != 0); /* not visible before commit */
  shard_sums a, b;
  CHECK_OK(shard_close(w, 1, &a));
  CHECK(a.first == 10 && a.count == 3 && a.invalid == 0);
  CHECK_OK(shard_verify(path, &lay, &b));
  CHECK(!memcmp(a.crc, b.crc, sizeof a.crc));
  shard_layout other = lay;
  other.job_fingerprint = 1;
  CHECK_ERR(shard_verify(path, &other, &b), "made by a different job");
  /* what a resume keeps a shard on: its claims, the same sums (and the
   * same layout as shard_read_sums gives the manifest), no data read */
  shard_sums claimed;
  CHECK_OK(shard_read_sums(path, &claimed));
  memset(&b, 0x5a, sizeof b);
  CHECK_OK(shard_check_claims(path, &lay, &b));
  CHECK(!memcmp(a.crc, b.crc, sizeof a.crc) && b.first == 10 && b.count == 3 &&
        b.has_layout == claimed.has_layout && !memcmp(claimed.layout, b.layout, sizeof b.layout));
  CHECK_ERR(shard_check_claims(path, &other, &b), "made by a different job");
  /* change one value of /targets behind the shard's back */
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "targets", H5P_DEFAULT);
  hid_t fs = H5Dget_space(d);
  hsize_t start[4] = {1, 2, 3, 3}, cnt[4] = {1, 1, 1, 1};
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL);
  hid_t ms = H5Screate_simple(4, cnt, NULL);
  float v = 1e9f;
  H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, &v);
  H5Sclose(ms);
  H5Sclose(fs);
  H5Dclose(d);
  H5Fclose(f);
  CHECK_ERR(shard_verify(path, &lay, &b), "s.h5: /targets: checksum mismatch");
  /* the claims are unchanged by damage to the data: that is verify's to find */
  CHECK_OK(shard_check_claims(path, &lay, &b));
  /* a truncated copy does not open: HDF5 compares the file's size with the
   * end it records */
  struct stat st;
  CHECK(stat(path, &st) == 0 && truncate(path, st.st_size / 2) == 0);
  CHECK_ERR(shard_check_claims(path, &lay, &b), "s.h5: not a readable HDF5 file");
  CHECK_ERR(shard_verify(path, &lay, &b), "s.h5: not a readable HDF5 file");
  /* float64 storage, no inputs: the checksums are those of the float32 data */
  snprintf(path, sizeof path, "%s/f64.h5", dir);
  shard_layout l64 = {.n = 4, .nf = 3, .store_inputs = 0, .targets_f64 = 1, .job_fingerprint = 0xabcd};
  CHECK_OK(shard_open(&w, path, &l64, 10, 3));
  for (int s = 0; s < 3; s++) {
    for (int i = 0; i < 48; i++) tg[i] = (float)(i + s) * 0.25f;
    double q[4] = {1, 0, 0, 0};
    CHECK_OK(shard_put(w, in, tg, 3, s, q, 0, 1));
  }
  shard_sums c64;
  CHECK_OK(shard_close(w, 1, &c64));
  CHECK(c64.crc[SHARD_TARGETS] == a.crc[SHARD_TARGETS] && c64.crc[SHARD_INPUTS] == 0);
  CHECK_OK(shard_verify(path, &l64, &b));
  CHECK_ERR(shard_verify(path, &lay, &b), "layout n=4 channels=3 store_inputs=0");
  CHECK_OK(shard_check_claims(path, &l64, &b));
  CHECK_ERR(shard_check_claims(path, &lay, &b), "layout n=4 channels=3 store_inputs=0");
  f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  d = H5Dopen2(f, "targets", H5P_DEFAULT);
  hid_t t = H5Dget_type(d);
  CHECK(H5Tget_size(t) == 8 && H5Lexists(f, "inputs", H5P_DEFAULT) == 0);
  H5Tclose(t);
  H5Dclose(d);
  H5Fclose(f);
  /* a /split of 2 rows in a shard of 3 (with its crc32 attribute, so only
   * the row count is wrong): found by both, without reading the data */
  f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  CHECK(H5Ldelete(f, "split", H5P_DEFAULT) >= 0);
  hsize_t two = 2;
  hid_t sp = H5Screate_simple(1, &two, NULL);
  d = H5Dcreate2(f, "split", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CHECK(d >= 0 && h5_put_attr(d, "crc32", H5T_NATIVE_UINT32, &c64.crc[SHARD_SPLIT]) == 0);
  H5Dclose(d);
  H5Sclose(sp);
  H5Fclose(f);
  CHECK_ERR(shard_check_claims(path, &l64, &b), "f64.h5: /split: 2 rows, expected 3");
  CHECK_ERR(shard_verify(path, &l64, &b), "f64.h5: /split: 2 rows, expected 3");
  /* an abandoned shard leaves nothing behind */
  snprintf(path, sizeof path, "%s/t.h5", dir);
  CHECK_OK(shard_open(&w, path, &lay, 0, 2));
  CHECK_OK(shard_close(w, 0, NULL));
  CHECK(access(path, F_OK) != 0);
  check_scratch_remove();
}

static void test_ranges(void) {
  int64_t first, count;
  CHECK(dataset_shards(24, 4) == 6 && dataset_shards(25, 4) == 7 && dataset_shards(3, 64) == 1);
  dataset_shard_range(6, 25, 4, &first, &count);
  CHECK(first == 24 && count == 1);
  dataset_shard_range(2, 25, 4, &first, &count);
  CHECK(first == 8 && count == 4);
}

/* every field of two shards' sums equal (field by field: the struct has
 * padding) */
static int same_sums(const shard_sums *a, const shard_sums *b) {
  return a->first == b->first && a->count == b->count && !memcmp(a->crc, b->crc, sizeof a->crc) &&
         a->has_checksums == b->has_checksums && a->invalid == b->invalid &&
         a->has_layout == b->has_layout && !memcmp(a->layout, b->layout, sizeof a->layout) &&
         a->bytes == b->bytes;
}

/* What a run hands the manifest (the sums of the shards it made, from
 * shard_close; of those it kept, from shard_check_claims) equals what
 * reading the file back gives (shard_read_sums, the manifest's source
 * before): rank 0 no longer opens every shard again. With and without
 * stored inputs, a compressed shard (no layout), an invalid sample. */
static void test_shard_close_sums(void) {
  const char *dir = check_scratch("test_shard_sums");
  for (int v = 0; v < 3; v++) {
    char path[1100];
    snprintf(path, sizeof path, "%s/s%d.h5", dir, v);
    shard_layout lay = {.n = 8, .nf = 2, .store_inputs = v != 1, .gzip = v == 2 ? 1 : 0,
                        .job_fingerprint = 0x1234};
    shard_writer *w;
    CHECK_OK(shard_open(&w, path, &lay, 40, 5));
    size_t nin = 3 * 8 * 8 * 8;
    for (int s = 0; s < 5; s++) {
      float *in = shard_row_buffer(nin), tg[2 * 64];
      CHECK(in != NULL);
      if (!in) return;
      for (size_t i = 0; i < nin; i++) in[i] = (float)(i % 97) * (float)(s + 1);
      for (int i = 0; i < 128; i++) tg[i] = (float)(i * s) * 0.5f;
      double q[4] = {0.5, 0.5, 0.5, 0.5};
      CHECK_OK(shard_put(w, in, tg, 8, s, q, 1, s != 3));
    }
    shard_sums closed, read, claimed;
    memset(&closed, 0x5a, sizeof closed);
    CHECK_OK(shard_close(w, 1, &closed));
    CHECK_OK(shard_read_sums(path, &read));
    CHECK_OK(shard_check_claims(path, &lay, &claimed));
    CHECK(same_sums(&closed, &read) && same_sums(&claimed, &read));
    CHECK(read.bytes == fs_file_size(path) && read.invalid == 1 && read.first == 40 &&
          read.count == 5);
    CHECK(read.has_layout == (v != 2)); /* a deflated shard's rows have no fixed place */
    if (v == 0) CHECK(read.layout[SHARD_LAY_IN_STRIDE] >= (int64_t)(nin * 4));
    if (v == 1) CHECK(read.layout[SHARD_LAY_IN] == 0 && read.layout[SHARD_LAY_TG] > 0);
  }
}

int main(void) {
  RUN(test_defaults);
  RUN(test_reconstruction);
  RUN(test_errors);
  RUN(test_channels);
  RUN(test_channel_convention);
  RUN(test_splits);
  RUN(test_job_files);
  RUN(test_schema_doc);
  RUN(test_shard_roundtrip);
  RUN(test_shard_close_sums);
  RUN(test_ranges);
  return check_report();
}

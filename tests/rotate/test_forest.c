/* test_forest.c - the AMRVAC forest walk against the stored level/ig arrays
 * of real snapshots, and build/decode round trips. */
#include <stdint.h>
#include <stdlib.h>

#include "rotate/amrvac_forest.h"
#include "check.h"

static const char *data_dir;

/* Read the raw tree section of a 3-D or 2-D v5 file without the reader. */
static void check_file(const char *name, int ndim, const int ng[3]) {
  char path[1024];
  snprintf(path, sizeof path, "%s/amrvac/%s", data_dir, name);
  FILE *f = fopen(path, "rb");
  CHECK_MSG(f != NULL, "cannot open %s", path);
  if (!f) return;
  int32_t hdr[10];
  CHECK(fread(hdr, 4, 10, f) == 10);
  int levmax = hdr[6], nleafs = hdr[7], nparents = hdr[8];
  int64_t nbits = nleafs + nparents;
  int32_t *bits = malloc(4 * nbits), *lev = malloc(4 * nleafs), *ig = malloc(4 * ndim * nleafs);
  fseek(f, hdr[1], SEEK_SET);
  CHECK(fread(bits, 4, nbits, f) == (size_t)nbits);
  CHECK(fread(lev, 4, nleafs, f) == (size_t)nleafs);
  CHECK(fread(ig, 4, (size_t)ndim * nleafs, f) == (size_t)ndim * nleafs);
  fclose(f);
  amrvac_block_id *leaves = malloc(sizeof *leaves * nleafs);
  CHECK_OK(amrvac_forest_decode(ndim, ng, levmax, bits, nbits, nleafs, leaves));
  int bad = 0;
  for (int i = 0; i < nleafs; i++) {
    if (leaves[i].level != lev[i]) bad++;
    for (int d = 0; d < ndim; d++)
      if (leaves[i].ig[d] != ig[ndim * i + d]) bad++;
  }
  CHECK_MSG(bad == 0, "%s: %d mismatches between the walk and the stored arrays", name, bad);
  /* inconsistent bit arrays are refused */
  CHECK_ERR(amrvac_forest_decode(ndim, ng, levmax, bits, nbits - 1, nleafs, leaves), "tree");
  CHECK_ERR(amrvac_forest_decode(ndim, ng, levmax - 1 > 0 ? levmax - 1 : 1, bits, nbits, nleafs, leaves),
            "levmax");
  free(bits);
  free(lev);
  free(ig);
  free(leaves);
}

static void test_real_files(void) {
  check_file("agbwind3d_0000.dat", 3, (int[3]){4, 4, 4});
  check_file("bw3d_amr_0000.dat", 3, (int[3]){3, 2, 2});
  check_file("bw3d_amr_ghost_0000.dat", 3, (int[3]){3, 2, 2});
  check_file("thirdparty_WR_2D_0004.dat", 2, (int[3]){8, 1, 1});
}

static int refine_corner(const amrvac_block_id *id, void *user) {
  (void)user;
  return id->ig[0] == 1 && id->ig[1] == 1 && id->ig[2] == 1;
}

static void test_build_roundtrip(void) {
  int ng[3] = {3, 2, 2};
  int32_t *bits;
  amrvac_block_id *leaves;
  int64_t nbits, nleafs;
  CHECK_OK(amrvac_forest_build(3, ng, 4, refine_corner, NULL, &bits, &nbits, &leaves, &nleafs));
  /* 12 roots; the corner block refined down to level 4: 3 parents, 11 + 3*7 + 8 leaves */
  CHECK(nleafs == 11 + 7 + 7 + 8 && nbits == nleafs + 3);
  amrvac_block_id *dec = malloc(sizeof *dec * nleafs);
  CHECK_OK(amrvac_forest_decode(3, ng, 4, bits, nbits, nleafs, dec));
  for (int64_t i = 0; i < nleafs; i++)
    CHECK(dec[i].level == leaves[i].level && dec[i].ig[0] == leaves[i].ig[0] &&
          dec[i].ig[1] == leaves[i].ig[1] && dec[i].ig[2] == leaves[i].ig[2]);
  free(dec);
  free(bits);
  free(leaves);
}

int main(void) {
  data_dir = getenv("COEMU_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  RUN(test_real_files);
  RUN(test_build_roundtrip);
  return check_report();
}

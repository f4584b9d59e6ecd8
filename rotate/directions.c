/* directions.c - the four direction samplers. */
#include "rotate/directions.h"

#include <math.h>
#include <string.h>

#include "common/error.h"
#include "common/rng.h"

static const char *names[] = {"haar", "faceon", "lowdisc", "coemunet"};

int dir_parse(const char *name, dir_sampler *out) {
  for (int i = 0; i < 4; i++)
    if (name && !strcmp(name, names[i])) {
      *out = (dir_sampler)i;
      return 0;
    }
  CE_FAIL("sampler '%s': expected haar, faceon, lowdisc or coemunet", name ? name : "");
}

const char *dir_name(dir_sampler s) { return (unsigned)s < 4 ? names[s] : "?"; }

void dir_matrix(const double q[4], double R[9]) {
  double w = q[0], x = q[1], y = q[2], z = q[3];
  R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z);     R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z);     R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y);     R[7] = 2 * (y * z + w * x);     R[8] = 1 - 2 * (x * x + y * y);
}

void dir_axis_angle(const double axis[3], double angle, double q[4]) {
  double s = sin(0.5 * angle);
  q[0] = cos(0.5 * angle);
  for (int d = 0; d < 3; d++) q[d + 1] = s * axis[d];
}

void dir_qmul(const double a[4], const double b[4], double o[4]) {
  double r[4] = {a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3],
                 a[0] * b[1] + a[1] * b[0] + a[2] * b[3] - a[3] * b[2],
                 a[0] * b[2] - a[1] * b[3] + a[2] * b[0] + a[3] * b[1],
                 a[0] * b[3] + a[1] * b[2] - a[2] * b[1] + a[3] * b[0]};
  memcpy(o, r, sizeof r);
}

static void normalise(double q[4]) {
  double n = sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  for (int i = 0; i < 4; i++) q[i] /= n;
}

/* A rotation with R e_z = l (unit), then rolled by `roll` about l. */
static void line_of_sight(const double l[3], double roll, double q[4]) {
  double align[4];
  if (l[2] < -1 + 1e-12) {
    align[0] = 0; align[1] = 1; align[2] = 0; align[3] = 0; /* half turn about x */
  } else {
    /* half-way quaternion between e_z and l: (1 + e_z.l, e_z x l) */
    align[0] = 1 + l[2]; align[1] = -l[1]; align[2] = l[0]; align[3] = 0;
    normalise(align);
  }
  double zr[4] = {cos(0.5 * roll), 0, 0, sin(0.5 * roll)};
  dir_qmul(align, zr, q);
  normalise(q);
}

void dir_quaternion(dir_sampler s, uint64_t seed, uint32_t model_id, uint32_t dir_index,
                    double q[4]) {
  ce_rng r = ce_rng_make(seed, model_id, dir_index, DIR_STREAM);
  const double two_pi = 6.283185307179586;
  switch (s) {
  case DIR_FACEON:
    q[0] = 1; q[1] = q[2] = q[3] = 0;
    return;
  case DIR_HAAR: {
    double u1 = ce_rng_uniform(&r), u2 = ce_rng_uniform(&r), u3 = ce_rng_uniform(&r);
    double a = sqrt(1 - u1), b = sqrt(u1);
    q[0] = a * sin(two_pi * u2); q[1] = a * cos(two_pi * u2);
    q[2] = b * sin(two_pi * u3); q[3] = b * cos(two_pi * u3);
    if (q[0] < 0) for (int i = 0; i < 4; i++) q[i] = -q[i]; /* same rotation, w >= 0 */
    return;
  }
  case DIR_LOWDISC: {
    /* R2 sequence (Roberts 2018): alpha = (1/g, 1/g^2), g^3 = g + 1 */
    const double a1 = 0.7548776662466927, a2 = 0.5698402909980532;
    ce_rng shift = ce_rng_make(seed, model_id, UINT32_MAX, DIR_STREAM);
    double s1 = ce_rng_uniform(&shift), s2 = ce_rng_uniform(&shift);
    double u = fmod(s1 + a1 * (double)dir_index, 1.0), v = fmod(s2 + a2 * (double)dir_index, 1.0);
    double cz = 1 - 2 * u, sz = sqrt(fmax(0, 1 - cz * cz)), phi = two_pi * v;
    double l[3] = {sz * cos(phi), sz * sin(phi), cz};
    line_of_sight(l, two_pi * ce_rng_uniform(&r), q);
    return;
  }
  case DIR_COEMUNET: {
    double cz = 2 * ce_rng_uniform(&r) - 1, phi = two_pi * ce_rng_uniform(&r);
    double sz = sqrt(fmax(0, 1 - cz * cz));
    double axis[3] = {sz * cos(phi), sz * sin(phi), cz};
    dir_axis_angle(axis, two_pi * ce_rng_uniform(&r), q);
    return;
  }
  }
  q[0] = 1; q[1] = q[2] = q[3] = 0;
}

/* ref_lte.c - the LTE line imager written literally from docs/physics.md
 * (Pomme's LTE_image_along_last_axis), one scalar at a time, with libm exp
 * and erf and whole-array intermediates like the PyTorch original. It shares
 * no code with solver/lte.c; the tests compare the two. */
#include "ref_lte.h"

#include <math.h>
#include <stdlib.h>

ref_lte_branch_counts ref_lte_counts;

static const double c = 299792458.0, h = 6.62607015e-34, kB = 1.380649e-23,
                    u = 1.66053906660e-27;

void ref_lte_image(const lamda_molecule *m, int transition, double mass_amu, const double *freqs,
                   int nf, int nx, int ny, int nz, const double *v, const double *T,
                   const double *n, double dx, double vt, double I_bdy, int corrected,
                   double *image, double *noise) {
  const lamda_line *t = &m->lines[transition - 1];
  double nu0 = t->freq_ghz * 1e9, A = t->A;
  double gu = m->levels[t->upper - 1].weight, gl = m->levels[t->lower - 1].weight;
  double Bul = (A * (c * c)) / ((2 * h) * pow(nu0, 3));
  double Blu = (gu / gl) * Bul;
  double fac = (h * nu0) / (4 * M_PI);
  double sqrt_pi = sqrt(M_PI);
  size_t ncell = (size_t)nx * ny * nz;
  double *S = malloc(ncell * sizeof *S), *a = malloc(ncell * sizeof *a);
  double *b = malloc(ncell * nf * sizeof *b), *eb = malloc(ncell * nf * sizeof *eb),
         *er = malloc(ncell * nf * sizeof *er);
  for (size_t i = 0; i < ncell; i++) {
    double invT = 1 / T[i], Z = 0, wl = 0, wu = 0;
    for (int k = 0; k < m->nlev; k++) {
      double E = m->levels[k].energy_cm * ((1e2 * h) * c);
      double w = m->levels[k].weight * exp((-E / kB) * invT);
      Z += w;
      if (k == t->lower - 1) wl = w;
      if (k == t->upper - 1) wu = w;
    }
    double r = 1 / Z, pl = wl * r, pu = wu * r;
    double eta = (fac * A) * pu;
    double chi = fac * (Blu * pl - Bul * pu);
    S[i] = eta / chi;
    double dnu = (nu0 / c) * sqrt((2 * kB) / (mass_amu * u) * T[i] + vt * vt);
    double iw = 1 / dnu;
    a[i] = ((1 / sqrt_pi) * iw) * chi * n[i];
    for (int f = 0; f < nf; f++) {
      double bb = iw * ((1 + v[i] * (1 / c)) * freqs[f] - nu0);
      b[i * nf + f] = bb;
      eb[i * nf + f] = exp(-bb * bb);
      er[i * nf + f] = erf(bb);
    }
  }
  double *dtau = malloc(nz * sizeof *dtau), *em = malloc(nz * sizeof *em), *dnoise = malloc(nz * sizeof *dnoise);
  for (int x = 0; x < nx; x++)
    for (int y = 0; y < ny; y++)
      for (int f = 0; f < nf; f++) {
        size_t ray = ((size_t)x * ny + y) * nz;
        double tau = 0;
        em[0] = 1;
        for (int k = 0; k + 1 < nz; k++) {
          size_t i0 = ray + k, i1 = ray + k + 1;
          double a0 = a[i0] * dx, a1 = a[i1] * dx;
          double b0 = b[i0 * nf + f], b1 = b[i1 * nf + f];
          double eb0 = eb[i0 * nf + f], eb1 = eb[i1 * nf + f];
          double er0 = er[i0 * nf + f], er1 = er[i1 * nf + f];
          double b10 = b1 - b0, a01 = a0 + a1;
          double d = ((a1 - a0) * (eb0 - eb1) + ((sqrt_pi * a1) * b0 - (sqrt_pi * a0) * b1) * (er0 - er1)) *
                     (0.5 / (b10 * b10 + 1e-30));
          if (fabs(b10) < 1e-4) ref_lte_counts.b10_small++;
          else ref_lte_counts.b10_exact++;
          if (fabs(b10) < 1e-4) d = (0.5 * a01) * eb0 - ((1.0 / 3) * (a01 + a1)) * ((eb0 * b0) * b10);
          dtau[k] = d;
          /* what ~2 ulp errors in eb and er do to this segment's dtau */
          dnoise[k] = fabs(b10) < 1e-4 ? 0
                      : 4.5e-16 * (fabs(a1 - a0) * (eb0 + eb1) +
                                   fabs((sqrt_pi * a1) * b0 - (sqrt_pi * a0) * b1) * (fabs(er0) + fabs(er1))) *
                            (0.5 / (b10 * b10));
          tau = tau + d;
          em[k + 1] = exp(-tau);
        }
        double I = 0, smax = 0, nz_noise = 0;
        for (int k = 0; k < nz; k++) smax = fmax(smax, fabs(S[ray + k]));
        for (int k = 0; k + 1 < nz; k++) nz_noise += 2 * smax * em[k] * dnoise[k];
        if (noise) noise[((size_t)x * ny + y) * nf + f] = nz_noise;
        for (int k = 0; k + 1 < nz; k++) {
          double D = dtau[k], S0 = S[ray + k], S1 = S[ray + k + 1], em0 = em[k], em1 = em[k + 1];
          double r = (S0 * (em1 - em0 * (1 - D)) + S1 * (em0 - em1 * (1 + D))) / (D + 1e-30);
          if (D < 1e-4) ref_lte_counts.taylor++;
          else ref_lte_counts.exact++;
          if (D < 1e-4) {
            double f0, f1;
            if (corrected) { /* exact series of the two weights */
              f0 = D / 2 - D * D / 6 + D * D * D / 24;
              f1 = D / 2 + D * D / 6 + D * D * D / 24;
            } else { /* Pomme */
              f0 = D / 2 + D * D / 6 + D * D * D / 24;
              f1 = D / 2 - D * D / 6 - D * D * D / 24;
            }
            r = S0 * (em0 * f0) + S1 * (em1 * f1);
          }
          I += r;
        }
        image[((size_t)x * ny + y) * nf + f] = I_bdy * em[nz - 1] + I;
      }
  free(S); free(a); free(b); free(eb); free(er); free(dtau); free(em); free(dnoise);
}

/* evaluate.h - a COEmuNet model on a dataset split: the loss, MaxRel, ZNCC
 * and SSIM per sample and in summary, and the inference time. Used for
 * validation during `coemu train` and by `coemu eval`.
 *
 * Samples: the split's samples in ascending dataset order, or, with
 * max_samples, max_samples of them evenly spaced over that order (sample
 * floor(j N / max_samples), j = 0..max_samples-1), so a small validation set
 * still covers every model. They are cut into evaluation batches of `batch`
 * consecutive samples; with W MPI ranks, rank r evaluates batches r, r+W, ...
 * (the last batch is padded by repeating its first sample; the padding is
 * not counted), and the per-sample results are gathered on rank 0 in sample
 * order. Every figure is therefore the same for any number of ranks.
 *
 * Conventions: MaxRel in physical intensities through the dataset's own
 * inverse normalisation (metrics_stats_inverse with /stats); SSIM with the
 * data range of each evaluation batch's targets per channel (the paper's
 * per-batch convention), reported in both conventions (interior, reflect);
 * ZNCC per image and channel. The loss is the training loss (0.8 MSE + 0.2
 * spectral L1) averaged over all images.
 */
#ifndef COEMU_EVALUATE_H
#define COEMU_EVALUATE_H

#include <mpi.h>
#include <stdint.h>

#include "pipeline/serve/serve.h"
#include "trainer/coemunet.h"
#include "trainer/metrics.h"

typedef struct {
  MPI_Comm comm;
  int batch;            /* samples per forward pass (>= 1) */
  int64_t max_samples;  /* 0: the whole split */
  int keep;             /* keep predictions and targets of the first `keep` samples (<= batch) */
} eval_opts;

typedef struct {
  int64_t n;                       /* samples evaluated */
  double loss, mse, fft;           /* training loss and its terms, mean over images */
  metrics_summary maxrel;          /* MaxRel (%) distribution over samples */
  double zncc, ssim_interior, ssim_reflect; /* means over samples */
  double infer_ms;                 /* forward pass ms per sample (mean over ranks) */
  double seconds;                  /* wall time of the evaluation */
  /* rank 0 only: per sample, in sample order (NULL elsewhere) */
  int64_t *index;                  /* dataset sample index */
  double *maxrel_ps, *zncc_ps, *ssim_interior_ps, *ssim_reflect_ps;
  /* rank 0 only: the first `keep` samples, normalised, F*n*n floats each */
  int kept;
  float *kept_pred, *kept_target;
} eval_result;

/* Evaluate m (evaluation mode: BatchNorm running statistics) on src's split.
 * The model's batch size is set to o->batch (the caller restores its own).
 * Collective over o->comm. On failure every rank returns -1; a rank that
 * failed only because another did has the message EVAL_PEER_FAILED (so that
 * a caller can let the failing rank's own message speak, coemu eval). */
#define EVAL_PEER_FAILED "evaluation failed on another rank"
int evaluate_split(coemunet *m, serve_source *src, const eval_opts *o, eval_result *r);
void eval_result_free(eval_result *r);

#endif

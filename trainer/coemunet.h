/* coemunet.h - the COEmuNet architecture (docs/trainer.md) as an nn.h graph.
 *
 * Input (N, 3, G, G, G): channels v_z, T, n_CO. Three independent encoder
 * branches (stem CBR k3 pad 0, MaxPool3d(2), three stages of a strided
 * residual block with a convolutional shortcut and two identity blocks),
 * flattened and concatenated; Linear(latent) without activation;
 * Linear + ReLU viewed as (dec, F, G/8, G/8); a decoder of three stages that
 * halve the channels and double the image with nearest upsampling; output
 * (N, 1, F, G, G).
 *   nfreq == 1: the single-channel model: 2-D decoder (one Conv2d+BN+ReLU per
 *               stage), no output activation; 42,591,409 parameters at the
 *               defaults.
 *   nfreq > 1:  the multi-frequency model: 3-D decoder with (1,3,3) kernels,
 *               three Conv+BN+ReLU per stage, Tanh output; 143,303,809
 *               parameters at the defaults with nfreq = 7.
 *
 * Shortcut variants of the strided residual blocks:
 *   COEMUNET_SHORTCUT_REFERENCE (default): y = x2 + CBR1x1(x2), the 1x1x1
 *     shortcut applied to the block's own output, as the reference code does.
 *     Identity blocks also own a (never used) 1x1x1 CBR, as the reference
 *     code constructs one in every block: it is counted in the parameters and
 *     saved in checkpoints but gets no gradient (nn_param.used = 0).
 *   COEMUNET_SHORTCUT_INPUT: the usual ResNet form y = x2 + CBR1x1(x) with
 *     the block's stride, on the block input; identity blocks own no shortcut.
 *
 * Parameter and layer names follow the reference code's PyTorch state_dict
 * ("encoder0.layers.2.CBR0.layers.0.weight", "to_lat.weight",
 * "decoder3d.layers.30.bias", ...), so weights can be mapped one to one;
 * 2-D convolution weights are stored (Cout, Cin, 1, 3, 3).
 */
#ifndef COEMU_COEMUNET_H
#define COEMU_COEMUNET_H

#include <stdint.h>

#include "trainer/nn.h"

enum { COEMUNET_SHORTCUT_REFERENCE = 0, COEMUNET_SHORTCUT_INPUT = 1 };

typedef struct {
  int nfreq;     /* output frequency channels F: 1 (single-channel model) or more */
  int grid;      /* input cube side G (64); a multiple of 8, >= 16 */
  int stem;      /* stem channels (4) */
  int enc[3];    /* stage channels (8, 16, 32) */
  int latent;    /* first linear layer's width (4096) */
  int dec;       /* decoder input channels (64); divisible by 8 */
  int shortcut;  /* COEMUNET_SHORTCUT_* */
} coemunet_config;

/* The paper's configuration for nfreq output channels (1 or 7). */
coemunet_config coemunet_default(int nfreq);

typedef struct {
  coemunet_config cfg;
  nn_net net;
  int input;   /* node of the (3, G, G, G) input */
  int output;  /* node of the (1, F, G, G) output */
} coemunet;

/* Build, allocate and initialise the network (nn_finalize with seed) on the
 * CPU backend, or on backend be (initialised: nn_backend_init). The caller
 * then calls nn_set_batch(&m->net, n). */
int coemunet_build(coemunet *m, const coemunet_config *cfg, uint64_t seed);
int coemunet_build_on(coemunet *m, const coemunet_config *cfg, uint64_t seed,
                      const nn_backend *be);
void coemunet_free(coemunet *m);

/* The graph and parameter list only, nothing allocated: for counting
 * parameters and FLOPs and checking shapes. Free with coemunet_free(). */
int coemunet_describe(coemunet *m, const coemunet_config *cfg);

/* Encoder transfer (pretraining -> fine-tuning): copy every parameter and
 * buffer of the three encoder branches and of the latent layer (names
 * "encoder*" and "to_lat.*") from src into dst, which must agree on grid,
 * stem, encoder widths, latent width and shortcut variant (their decoders
 * differ: nfreq 1 vs F), backend to backend (nn_transfer). Everything else
 * in dst is left as it is. The
 * counts of tensors and values copied go to *ntensors / *nvalues (NULL to
 * skip). A mismatch is an error naming the field or tensor; dst is then
 * untouched. */
int coemunet_transfer_encoder(coemunet *dst, const coemunet *src, int *ntensors, int64_t *nvalues);

/* Check a configuration; the error names the field. */
int coemunet_check_config(const coemunet_config *cfg);

#endif

/* layers_cpu.h - the CPU reference kernels of the layers, on plain float32
 * arrays in NCDHW order; the CPU backend (nn_backend_cpu, backend_cpu.c)
 * runs the layers of nn.h on them.
 *
 * Convolutions and linear layers are matrix products: a convolution unrolls
 * each sample's input into columns (vol2col: K = Cin*kd*kh*kw rows of
 * P = Do*Ho*Wo output positions) and multiplies by the (Cout x K) weight with
 * OpenBLAS sgemm; its backward multiplies by the transposes and folds the
 * column gradient back (col2vol). Threads: convolutions run one OpenMP
 * thread per sample (own columns, partial dW/db summed in thread order),
 * linear layers one per slice of features, BatchNorm one per channel, the
 * rest plain parallel loops; OpenBLAS itself must run one thread (the CPU
 * backend's init sets it: nn_backend_init(&nn_backend_cpu, ...)). Every
 * backward ADDS into dx, dw, db (see nn.h). Sums of BatchNorm statistics
 * run in double. The work buffer of a convolution is conv3d_workspace()
 * floats for the current OpenMP thread count.
 *
 * Shapes: N batch, C channels, (D, H, W) input, (Do, Ho, Wo) output,
 * S = D*H*W. conv_shape carries a convolution's geometry.
 */
#ifndef COEMU_LAYERS_CPU_H
#define COEMU_LAYERS_CPU_H

#include <stddef.h>

typedef struct {
  int n, cin, d, h, w;     /* input */
  int cout, od, oh, ow;    /* output */
  int kd, kh, kw, sd, sh, sw, pd, ph, pw;
} conv_shape;

/* Floats of scratch a convolution needs: columns and their gradient. */
size_t conv3d_workspace(const conv_shape *s);

/* y = conv(x, w) + b. w: (cout, cin, kd, kh, kw), b: (cout). */
void conv3d_forward(const conv_shape *s, const float *x, const float *w, const float *b,
                    float *y, float *work);

/* dw += dL/dw, db += dL/db, and dx += dL/dx unless dx is NULL. */
void conv3d_backward(const conv_shape *s, const float *x, const float *w, const float *dy,
                     float *dw, float *db, float *dx, float *work);

/* Unroll one sample (cin, d, h, w) into col (K x P) and fold back (adding). */
void vol2col(const conv_shape *s, const float *x, float *col);
void col2vol(const conv_shape *s, const float *col, float *x);

/* BatchNorm in training mode: batch mean and population variance over
 * (N, S) per channel normalise x; the running statistics move by momentum
 * (the unbiased variance goes into running_var, as in PyTorch). save gets
 * (mean[C], invstd[C]) for the backward. Needs N*S > 1. */
void batchnorm_forward_train(int n, int c, long s, const float *x, const float *gamma,
                             const float *beta, float *rmean, float *rvar, float momentum,
                             float eps, float *y, float *save);
/* The same in pieces, for synchronised BatchNorm over replicas (nn.h,
 * nn_reducer), the caller summing across replicas in between:
 * sum[ch] = sum of x over (N, S); sq[ch] = sum of (x - mean[ch])^2; then
 * normalise with mean and the population variance sq/m of m values in all
 * (running statistics and save as above). With the local sums and m = N*S
 * these are batchnorm_forward_train() bit for bit. */
void batchnorm_sums(int n, int c, long s, const float *x, double *sum);
void batchnorm_sqdev(int n, int c, long s, const float *x, const double *mean, double *sq);
void batchnorm_normalise(int n, int c, long s, const float *x, const float *gamma,
                         const float *beta, const double *mean, const double *sq, double m,
                         float *rmean, float *rvar, float momentum, float eps, float *y,
                         float *save);
/* Evaluation mode: normalise with the running statistics. */
void batchnorm_forward_eval(int n, int c, long s, const float *x, const float *gamma,
                            const float *beta, const float *rmean, const float *rvar, float eps,
                            float *y);
/* Backward of either mode; train selects which statistics were used. */
void batchnorm_backward(int n, int c, long s, int train, const float *x, const float *gamma,
                        const float *rmean, const float *rvar, float eps, const float *save,
                        const float *dy, float *dx, float *dgamma, float *dbeta);
/* The training-mode backward in pieces (synchronised BatchNorm): sums gets
 * (sum dy [C], sum dy*xhat [C]) and dgamma, dbeta get the local sums added;
 * then dx += gamma*invstd*(dy - sum dy/m - xhat*sum(dy xhat)/m) with the
 * sums and the value count m over all replicas. */
void batchnorm_backward_sums(int n, int c, long s, const float *x, const float *save,
                             const float *dy, double *sums, float *dgamma, float *dbeta);
void batchnorm_backward_dx(int n, int c, long s, const float *x, const float *gamma,
                           const float *save, const float *dy, const double *sums, double m,
                           float *dx);

/* y = x W^T + b, x (n, in), W (out, in). */
void linear_forward(int n, int in, int out, const float *x, const float *w, const float *b,
                    float *y);
void linear_backward(int n, int in, int out, const float *x, const float *w, const float *dy,
                     float *dw, float *db, float *dx);

/* MaxPool3d with kernel = stride = k (floor mode); ties go to the first. */
void maxpool3d_forward(int nc, int d, int h, int w, int k, const float *x, float *y);
void maxpool3d_backward(int nc, int d, int h, int w, int k, const float *x, const float *dy,
                        float *dx);

/* Nearest upsampling by integer factors. */
void upsample_forward(int nc, int d, int h, int w, int fd, int fh, int fw, const float *x,
                      float *y);
void upsample_backward(int nc, int d, int h, int w, int fd, int fh, int fw, const float *dy,
                       float *dx);

#endif

/* sampler.h - rotated, trimmed cubes of (v_los, T, n_CO) from a model.
 *
 * Geometry (docs/sampling.md): the cube has n^3 voxels of edge/n, centred
 * on the model centre c. A point u in cube coordinates (axes x, y, z; z is
 * the line of sight, index 0 nearest the observer) is the model point
 *   x = c + R u,   R = dir_matrix(q),
 * so the line of sight in model coordinates is l = R e_z (third column of
 * R) and v_los = l . v = (R^T v)_z: positive away from the observer.
 *
 * Each voxel is the average of k^3 sub-samples on a regular k x k x k
 * lattice inside it (each sub-sample takes the value of the model there, as
 * the reconstruction defines it: sampler_recon): n_CO is the plain mean (volume average); T and v_los are
 * n_CO-weighted means (so the cube keeps the CO column and momentum of the
 * sub-samples; plain means where the sub-samples hold no CO).
 *
 * Trimming: ball_radius > 0 is the job's ball (smallest half-extent over its
 * models). A cube whose corners lie outside it (sqrt(3) edge/2 > r) is an
 * error unless fill_background is set; then sub-samples beyond r from c (or
 * outside the domain) take the background (bg_n, bg_T, v = 0). With
 * ball_radius <= 0 there is no ball: a cube leaving the domain is an error
 * unless fill_background is set.
 */
#ifndef COEMU_SAMPLER_H
#define COEMU_SAMPLER_H

#include "rotate/model.h"
#include "rotate/sampler_body.h"

/* Recorded with every dataset (/geometry sampler_version, beside the
 * reconstruction, sampler_recon_name): the version of sample_cube's
 * arithmetic for reconstruction r, bumped when the same options give other
 * bits. Per reconstruction, so that a change to one does not refuse the
 * images-only datasets of the others: constant and limited are version 1;
 * linear is 2 (its corners projected on the line of sight and its points
 * placed in float, docs/sampling.md). */
int sampler_recon_version(int r);

/* How a sub-sample takes its values from the model (docs/sampling.md):
 * CONSTANT: the leaf cell's value (cell averages, piecewise constant; the
 *   COEmuNet-compat reference);
 * LINEAR: the trilinear interpolation of (n_CO, T, v) between the corners of
 *   the leaf cell holding it (model_nodal_build): continuous across all
 *   faces, coarse-fine ones included, exact on linear fields;
 * LIMITED: the leaf cell's value plus limited slopes of (n_CO, T, v) times
 *   the offset from the cell's centre (sampler_limited_build): each cell's
 *   average kept, no value outside the range of the cell and its face
 *   neighbours (monotone), discontinuous at faces. */
typedef enum { SAMPLER_CONSTANT = 0, SAMPLER_LINEAR = 1, SAMPLER_LIMITED = 2 } sampler_recon;
#define SAMPLER_RECON_NAMES "constant | linear | limited"
/* "constant" / "linear" / "limited"; NULL for an unknown value */
const char *sampler_recon_name(int r);
/* the value for a name, or -1 */
int sampler_recon_parse(const char *name);

typedef struct {
  int n;              /* voxels per edge */
  double edge;        /* cube edge [m] */
  int k;              /* sub-samples per voxel edge (default 2) */
  double ball_radius; /* [m]; <= 0: no ball */
  int fill_background;
  double bg_n, bg_T;  /* background n_CO [m^-3] and T [K] */
  int reconstruction; /* sampler_recon */
} sampler_opts;

/* The limited reconstruction's records (docs/sampling.md), once per model
 * and thread-safe (under m->nodal_lock), SAMPLER_LIMITED_STRIDE floats per
 * leaf cell: the centre in finest-cell units (3), the cell's (n, T, vx, vy,
 * vz) (5), then per axis x, y, z the five fields' slopes per finest cell
 * (15: axis-major, so that the fields of one axis are contiguous for
 * vectors), and a 0.
 * Along each axis the slope is minmod of the differences to the face
 * neighbours (the leaf cell holding the point just past the face centre:
 * one of the finer cells there, or the coarser cell) divided by the
 * distance between the centres, 0 on the domain's faces; then all three are
 * scaled down together where their largest excursion, the sum over axes of
 * |slope| * half the cell, would leave the range of the cell and its face
 * neighbours. 0, or -1 (out of memory). sample_cube builds them itself. */
#define SAMPLER_LIMITED_STRIDE 24
int sampler_limited_build(ce_model *m);

/* Defaults: n = 64, k = 2, no fill, background 0, reconstruction linear.
 * edge and ball_radius 0. */
void sampler_defaults(sampler_opts *o);

/* Check the options against the model (cube inside the ball and the ball
 * inside the domain, or fill requested). */
int sampler_check(const ce_model *m, const sampler_opts *o);

/* Build, once per model, what o->reconstruction needs beyond the cells (the
 * corner values for linear: model_nodal_build; the slopes for limited:
 * sampler_limited_build; nothing for constant). Thread-safe; sample_cube
 * calls it itself, so calling it first only moves that one-time cost out
 * of the first cube (a timer, a model cache's accounting). */
int sampler_prepare(ce_model *m, const sampler_opts *o);

/* Cubes [(x*n + y)*n + z], z = line of sight. Fails only on bad options. */
int sample_cube(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                float *T, float *n_co);

/* The same cubes, plus nextra per-cell fields of the model (fields[e] is
 * a float per leaf cell, indexed like m->cells: leaf * ncell + local cell;
 * e.g. the level populations of solver/nlte_lvg.h) sampled as T is: the
 * n_CO-weighted mean of the k^3 sub-samples (plain mean where they hold no
 * CO), into out[e] ([(x*n + y)*n + z]). Weighting by n keeps the column of
 * molecules in each level: n_voxel * x_voxel is the volume mean of n x, so
 * the imager's emissivity and opacity (linear in n x) are the sub-samples'
 * means. The extra fields are cell values under either reconstruction
 * (weighted by the cell's n_CO). A background sub-sample takes bg_fields[e] (NULL: 0). v_los, T
 * and n_co are the bits sample_cube gives. */
#define SAMPLER_MAX_EXTRA 8

/* The sampler as per-thread bodies (rotate/sampler_body.h and
 * sampler_body_linear.h: what a device runs): the model as plain arrays,
 * and one cube's geometry. sampler_flatten builds m's corner records for
 * the linear reconstruction if not yet built (model_nodal_build, once per
 * model) and points F at m's arrays and at *leaf_geo, which it allocates
 * (nleaves*4 int32: level, ig; the caller frees it), and at the limited
 * reconstruction's records where they are built (sampler_prepare with
 * limited; NULL otherwise). The bodies have all three reconstructions.
 * sampler_geometry checks the options (sampler_check; limited: that the
 * records are built) and fills G for direction q. */
int sampler_flatten(const ce_model *m, sampler_flat *F, int32_t **leaf_geo);
int sampler_geometry(const ce_model *m, const double q[4], const sampler_opts *o, sampler_geo *G);

/* The sampler on a CUDA device (rotate/sampler_cuda.cu, with CUDA built):
 * open uploads m once (device `ordinal` modulo the devices present; desc
 * may be NULL); sample gives ncube cubes at directions q[c] with the same
 * bits as sample_cube (v_los, T, n_co only: no extra fields). Open uploads
 * the cells, the tree and the linear reconstruction's corner records, and
 * with recon = SAMPLER_LIMITED also the limited reconstruction's records
 * (built first, once per model: 96 bytes a cell), so that a handle samples
 * constant and linear, and limited where opened for it (a clear error
 * otherwise). It fails with the sizes when they do not fit in the device's
 * free memory. Without a CUDA build or a device, open fails with a message
 * saying which. m must outlive the handle. */
typedef struct sampler_device sampler_device;
int sampler_device_open(const ce_model *m, int recon, int ordinal, sampler_device **out,
                        char *desc, size_t ndesc);
int sampler_device_sample(sampler_device *s, int ncube, const double (*q)[4],
                          const sampler_opts *o, float *const *v_los, float *const *T,
                          float *const *n_co);
/* The first cubes of the same left in device memory (for the device's LTE
 * solver, solver/lte.h's lte_solve_batch_device_targets): returns how many
 * (1..ncube, one chunk of the device's buffers), *dev their cells (cube c:
 * v_los, T, n_co, n^3 floats each, from *dev + 3 c n^3), valid until the
 * next call on s; also copied to the host where v_los is not NULL. */
int sampler_device_sample_dev(sampler_device *s, int ncube, const double (*q)[4],
                              const sampler_opts *o, const float **dev, float *const *v_los,
                              float *const *T, float *const *n_co);
/* 1 when the device sampler has reconstruction r (callers ask rather than
 * assume which), 0 otherwise; whether CUDA is built is open's question. */
int sampler_device_supports(int r);
/* A second handle on s's model on the same device (nothing uploaded
 * again), with buffers and a stream of its own, so that one host thread
 * can sample into it while s's cubes are being solved: each handle is used
 * by one thread at a time. Close it before s. */
int sampler_device_open_sibling(sampler_device *s, sampler_device **out);
void sampler_device_close(sampler_device *s);
/* Host memory for cubes a device sampler brings back: page-locked where
 * CUDA is built and device `ordinal` (as sampler_device_open's) can be used
 * (*pinned = 1), so that rows laid
 * out as the device's buffer (cube c's v_los, T, n_co back to back from
 * the start, 3 n^3 floats a cube) are filled by one copy straight from the
 * device at the bus's rate; else ce_malloc_array's memory (*pinned = 0).
 * n x size bytes, within ce_malloc_array's checks (overflow, the allocation
 * limit); NULL with its message naming `what` when neither can be had. Free with sampler_device_host_free and
 * the same pinned. */
void *sampler_device_host_alloc(int ordinal, size_t n, size_t size, const char *what, int *pinned);
void sampler_device_host_free(void *p, int pinned);
int sample_cube_fields(const ce_model *m, const double q[4], const sampler_opts *o, float *v_los,
                       float *T, float *n_co, int nextra, const float *const *fields,
                       const float *bg_fields, float *const *out);

#endif

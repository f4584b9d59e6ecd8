/* bucket.h - the gradient bucket plan of data-parallel training: which
 * parameters' gradients are summed across replicas together, in which order,
 * and when each group is ready during the backward pass.
 *
 * The used trainable gradients lie in nn_net.grad_block in graph order (the
 * order the builders made the parameters; nn.c alloc_grads), and the backward
 * pass produces them in reverse graph order. A bucket is a contiguous range
 * of grad_block covering whole parameters (with the zero padding after each),
 * cut in reverse graph order: bucket 0 ends at grad_used_n and holds the last
 * parameters, bucket 1 the ones before them, ... A bucket is closed once it
 * holds at least `bucket` floats (a parameter larger than that is a bucket of
 * its own). Its gradients are final once the backward pass has run the node
 * that owns its first (lowest) parameter, ready_node; since the buckets go
 * down the block, ready_node never increases along the plan, so nn_backward
 * launches the buckets in plan order, each right after its ready node.
 *
 * The buckets tile [0, grad_used_n) exactly, so an elementwise sum over the
 * replicas gives the same bits whether it is made bucket by bucket or in the
 * reducer's chunks (each value's sum is the same operation on the same
 * operands; docs/trainer.md, "Gradient buckets"). Plain C: the NCCL path of
 * the CUDA backend and the host path of the CPU backend use the same plan.
 */
#ifndef COEMU_BUCKET_H
#define COEMU_BUCKET_H

#include <stddef.h>

struct nn_net;

typedef struct {
  size_t off, n;   /* floats [off, off + n) of grad_block */
  int ready_node;  /* its gradients are final after this node's backward */
  int nparams;     /* whole parameters in it */
} nn_bucket;

typedef struct {
  nn_bucket *b;    /* in launch order: bucket 0 ends at grad_used_n */
  int n;
  size_t floats;   /* the bucket size it was cut with */
} nn_bucket_plan;

/* 25 MB of float32 gradients, as PyTorch DDP's bucket_cap_mb default. */
#define NN_BUCKET_FLOATS ((size_t)25 * 1000 * 1000 / sizeof(float))

/* The plan of a finalised net for buckets of at least `floats` floats (>= 1).
 * 0, or -1 with an error (not finalised, no memory). A net without used
 * trainable parameters gets an empty plan. */
int nn_bucket_plan_make(const struct nn_net *net, size_t floats, nn_bucket_plan *p);
void nn_bucket_plan_free(nn_bucket_plan *p);

/* The buckets ready once the backward pass has run every node >= node
 * (nodes are run from the last one down): the count of buckets, counting
 * from the start of the plan, whose ready_node >= node. */
int nn_bucket_plan_ready(const nn_bucket_plan *p, int node);

#endif

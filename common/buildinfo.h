/* buildinfo.h - what this coemu is and where it runs, for people and for
 * provenance: the build (compiler, build type, the instruction sets its
 * flags enable, MPI, CUDA, sanitizers: common/meson.build's build_info.h)
 * and the CPU it runs on. `coemu version --verbose` prints them with the
 * libraries' run-time versions; every dataset's /provenance records the
 * build line (docs/dataset-format.md). */
#ifndef COEMU_BUILDINFO_H
#define COEMU_BUILDINFO_H

#include <stddef.h>

/* The fields below as one line into buf[n] (truncated to fit): "gcc
 * 12.2.0; release, -O3; native (-march=native): popcnt ... avx2 fma ...;
 * MPI openmpi 4.1.4; CUDA not built; sanitize none". */
void ce_build_line(char *buf, size_t n);

/* The fields of that line, one per call, for a table: key i (0.. while it
 * returns non-NULL) and its value. */
const char *ce_build_field(int i, const char **value);

/* This machine's CPU as the kernel names it (x86: /proc/cpuinfo's "model
 * name"; aarch64: "CPU implementer 0x41, part 0xd4f"), and how many CPUs
 * are online, into buf; "unknown" where /proc/cpuinfo says nothing. */
void ce_cpu_model(char *buf, size_t n);

#endif

/* cube_file.h - one cube of (v_z [m/s], T [K], n [m^-3]) on (x, y, z)
 * cells, z the line of sight, read from files: three .npy arrays, or an
 * HDF5 file with datasets v_z, T and n (what `coemu sample --h5` writes,
 * with the cell spacing in its attribute dx). For `coemu solve --in` and
 * `coemu bench solver --cubes FILE.h5`. Errors name the file, the dataset
 * and what was expected.
 */
#ifndef COEMU_CUBE_FILE_H
#define COEMU_CUBE_FILE_H

typedef struct {
  int nx, ny, nz;
  double *v, *T, *n; /* [(x*ny + y)*nz + z], float64 whatever the file's type */
  double dx;         /* the file's cell spacing [m] (HDF5 attribute dx); NaN where it has none */
  const char *src[3]; /* where each array came from, for messages */
} cube_file;

/* paths: the v_z, T and n arrays (.npy, float32 or float64, C order) */
int cube_file_read_npy(const char *paths[3], cube_file *c);
/* An HDF5 file with datasets v_z, T, n of one shape (x, y, z), each
 * 1..2^20 cells an axis */
int cube_file_read_h5(const char *path, cube_file *c);
void cube_file_free(cube_file *c);

#endif

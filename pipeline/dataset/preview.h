/* preview.h - a picture of a dataset: for a few samples, mid-plane slices of
 * the input cubes (v_z [km/s], log T, log n_CO) and the channel maps of the
 * target (log I, labelled by channel velocity), one row per sample titled
 * with its sample id, model, direction and split; a colour bar with units per
 * input field and one for the channels (docs/plots.md). Written by `coemu
 * generate` as DIR/preview.png and by `coemu inspect DIR --preview FILE.png`. */
#ifndef COEMU_PREVIEW_H
#define COEMU_PREVIEW_H

/* Rows for up to `nsamples` samples spread evenly over the dataset. */
int dataset_preview(const char *dir, int nsamples, const char *png_path);

#endif

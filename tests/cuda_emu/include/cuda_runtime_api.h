/* cuda_runtime_api.h of the CUDA emulator: the same declarations */
#include "cuda_runtime.h"

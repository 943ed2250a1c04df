// Pixel K-means of Cell Region Filtering: the assignment step (Eq. 3) and the per-cluster sums that
// the centre update (Eq. 2) needs, for a batch of images at once.
//
// The loader (kernels/cupy_source.py) prepends a preamble that defines:
//   ACTIVESSF_BLOCK         threads per block (a multiple of 32)
//   ACTIVESSF_ITEMS         pixels per thread, so one block covers ACTIVESSF_BLOCK * ACTIVESSF_ITEMS pixels
//   ACTIVESSF_MAX_CLUSTERS  largest K a launch may use (sizes the shared-memory arrays)
//   ACTIVESSF_FIXED_POINT   centres are integers in units of 1 / ACTIVESSF_FIXED_POINT colour level
//
// Layouts (C-contiguous): pixels (B, n, 3) uint8, RGB interleaved; centres (B, k, 3) float32 in fixed
// point; labels (B, n) int64; sums (B, k, 3) and counts (B, k) int64, added to (the caller zeroes them).
// Launch geometry: grid (ceil(n / (ACTIVESSF_BLOCK * ACTIVESSF_ITEMS)), B), block (ACTIVESSF_BLOCK);
// blockIdx.y is the image, blockIdx.x a tile of consecutive pixels of it.
//
// Exactness: the squared distance is ((0 + d0 * d0) + d1 * d1) + d2 * d2 with d = 8 * pixel - centre,
// each operation rounded to nearest by an explicit intrinsic, so the compiler cannot contract a multiply
// and an add into an FMA. That is the very sequence of float32 operations the torch reference performs,
// so the result is bit-identical for any finite centres; for fixed-point centres every intermediate is
// an integer below 2^24 and nothing is rounded at all. Ties go to the lowest cluster index (a strictly
// smaller distance is needed to move to a later centre), as torch.argmin does.

#if ACTIVESSF_BLOCK % 32 != 0
#error "ACTIVESSF_BLOCK must be a multiple of the warp size"
#endif

#define ACTIVESSF_TILE (ACTIVESSF_BLOCK * ACTIVESSF_ITEMS)
#define ACTIVESSF_WARPS (ACTIVESSF_BLOCK / 32)

// Index of the centre nearest to pixel (r, g, b); `centre` holds k fixed-point centres in shared memory.
__device__ __forceinline__ int activessf_nearest(unsigned char r, unsigned char g, unsigned char b,
                                                 const float* centre, int k) {
    const float p0 = __fmul_rn((float)r, (float)ACTIVESSF_FIXED_POINT);
    const float p1 = __fmul_rn((float)g, (float)ACTIVESSF_FIXED_POINT);
    const float p2 = __fmul_rn((float)b, (float)ACTIVESSF_FIXED_POINT);
    int best = 0;
    float best_dist = 0.0f;
    for (int j = 0; j < k; ++j) {
        const float d0 = __fsub_rn(p0, centre[3 * j]);
        const float d1 = __fsub_rn(p1, centre[3 * j + 1]);
        const float d2 = __fsub_rn(p2, centre[3 * j + 2]);
        float dist = __fadd_rn(0.0f, __fmul_rn(d0, d0));
        dist = __fadd_rn(dist, __fmul_rn(d1, d1));
        dist = __fadd_rn(dist, __fmul_rn(d2, d2));
        if (j == 0 || dist < best_dist) {  // strict: equal distances keep the lower index
            best = j;
            best_dist = dist;
        }
    }
    return best;
}

// Copy the k centres of image blockIdx.y into shared memory. Every thread of the block must call it
// (it ends with __syncthreads()).
__device__ __forceinline__ void activessf_load_centres(float* shared_centres, const float* centres, int k) {
    const float* own = centres + (long long)blockIdx.y * k * 3;
    for (int i = threadIdx.x; i < k * 3; i += ACTIVESSF_BLOCK) {
        shared_centres[i] = own[i];
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(ACTIVESSF_BLOCK)
activessf_pixel_kmeans_assign(const unsigned char* __restrict__ pixels, const float* __restrict__ centres,
                              long long* __restrict__ labels, const int n, const int k) {
    __shared__ float shared_centres[ACTIVESSF_MAX_CLUSTERS * 3];
    activessf_load_centres(shared_centres, centres, k);

    const long long image_start = (long long)blockIdx.y * n;  // first pixel of this image
    const int tile_start = blockIdx.x * ACTIVESSF_TILE;
    for (int item = 0; item < ACTIVESSF_ITEMS; ++item) {
        const int p = tile_start + item * ACTIVESSF_BLOCK + threadIdx.x;  // consecutive threads, consecutive pixels
        if (p < n) {
            const unsigned char* px = pixels + (image_start + p) * 3;
            labels[image_start + p] = activessf_nearest(px[0], px[1], px[2], shared_centres, k);
        }
    }
}

// Assignment plus per-cluster sums of the raw uint8 channels and pixel counts.
//
// Reduction: each warp owns a private histogram in shared memory (k clusters x {r, g, b, count},
// 32-bit), so shared atomics contend only within a warp; after the tile the block adds the warp
// histograms together and issues one global 64-bit atomicAdd per non-empty (cluster, channel) and per
// non-empty cluster count, instead of four global atomics per pixel. A block sums at most
// ACTIVESSF_TILE pixels, so a 32-bit shared counter holds at most 255 * ACTIVESSF_TILE and cannot
// overflow (the loader checks 255 * ACTIVESSF_TILE < 2^32). Integer addition is associative, so the
// order of the atomics does not change the result.
extern "C" __global__ void __launch_bounds__(ACTIVESSF_BLOCK)
activessf_pixel_kmeans_accumulate(const unsigned char* __restrict__ pixels, const float* __restrict__ centres,
                                  unsigned long long* __restrict__ sums, unsigned long long* __restrict__ counts,
                                  const int n, const int k) {
    __shared__ float shared_centres[ACTIVESSF_MAX_CLUSTERS * 3];
    __shared__ unsigned int histogram[ACTIVESSF_WARPS][ACTIVESSF_MAX_CLUSTERS * 4];  // r, g, b, count

    for (int i = threadIdx.x; i < ACTIVESSF_WARPS * ACTIVESSF_MAX_CLUSTERS * 4; i += ACTIVESSF_BLOCK) {
        (&histogram[0][0])[i] = 0u;
    }
    activessf_load_centres(shared_centres, centres, k);  // its __syncthreads() also publishes the zeroes

    unsigned int* own = histogram[threadIdx.x / 32];
    const long long image_start = (long long)blockIdx.y * n;
    const int tile_start = blockIdx.x * ACTIVESSF_TILE;
    for (int item = 0; item < ACTIVESSF_ITEMS; ++item) {
        const int p = tile_start + item * ACTIVESSF_BLOCK + threadIdx.x;
        if (p < n) {
            const unsigned char* px = pixels + (image_start + p) * 3;
            const unsigned char r = px[0], g = px[1], b = px[2];
            const int j = activessf_nearest(r, g, b, shared_centres, k);
            atomicAdd(&own[4 * j], (unsigned int)r);
            atomicAdd(&own[4 * j + 1], (unsigned int)g);
            atomicAdd(&own[4 * j + 2], (unsigned int)b);
            atomicAdd(&own[4 * j + 3], 1u);
        }
    }
    __syncthreads();  // reached by every thread: no early return above

    const long long out = (long long)blockIdx.y * k;  // first cluster of this image in sums / counts
    for (int i = threadIdx.x; i < k * 4; i += ACTIVESSF_BLOCK) {
        unsigned long long total = 0;
        for (int w = 0; w < ACTIVESSF_WARPS; ++w) {
            total += histogram[w][i];
        }
        if (total != 0) {
            const int cluster = i / 4, field = i % 4;
            if (field < 3) {
                atomicAdd(&sums[(out + cluster) * 3 + field], total);
            } else {
                atomicAdd(&counts[out + cluster], total);
            }
        }
    }
}

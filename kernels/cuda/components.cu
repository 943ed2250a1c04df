// Per-label bounding box and pixel count of a labelled image, in one pass.
//
// The loader (kernels/cupy_source.py) prepends a preamble that defines:
//   ACTIVESSF_BLOCK   threads per block (a multiple of 32)
//   ACTIVESSF_CHUNKS  32-pixel chunks per warp segment: one warp walks ACTIVESSF_CHUNKS * 32 pixels of a row
//
// Input: labels (height, width) int32, C-contiguous; 0 is background, 1..n are regions, any other value
// is ignored. Output, indexed by label - 1 and initialised by the caller:
//   box (n, 4) int32 [x0, y0, x1, y1]: x0 and y0 start at INT_MAX (atomicMin), x1 and y1 at 0 (atomicMax
//   of x + 1 and y + 1, so both are exclusive); counts (n,) int64, starting at 0 (atomicAdd).
// A launch may cover a band of rows only: `labels` then points at its first row, and `row_offset` is
// that row's index in the image (box rows are image rows).
// Launch geometry: block (ACTIVESSF_BLOCK); grid (ceil(segments per row / warps per block), rows), and
// a block whose blockIdx.y is below the height walks the rows blockIdx.y, blockIdx.y + gridDim.y, ...
// (so a grid height capped at 65535 still covers a taller band).
//
// Reduction: run merging in registers, not shared memory. The lanes of a warp read 32 consecutive
// pixels of one row (one coalesced load); with a ballot they find the runs of equal labels, and only the
// first lane of each run touches global memory, once per run instead of once per pixel. A run that
// reaches the end of a chunk stays open in registers and is carried into the next chunk of the segment,
// so a region crossing a warp's whole segment costs one set of atomics per row. A shared-memory table
// per block would need hashing (labels are unbounded, and a block sees few of them), and would save
// little once runs are merged. Before an atomicMin / atomicMax the current value is read: box
// coordinates only ever move one way, so a value that already covers the run (even a stale read of it)
// proves the atomic would change nothing, and most such atomics are skipped. Every result is a min, max
// or integer sum, so the order of the atomics does not change it: the answer is deterministic and equal
// to scipy.ndimage.find_objects and numpy.bincount on the CPU.

#if ACTIVESSF_BLOCK % 32 != 0
#error "ACTIVESSF_BLOCK must be a multiple of the warp size"
#endif

#define ACTIVESSF_WARPS (ACTIVESSF_BLOCK / 32)
#define ACTIVESSF_SEGMENT (ACTIVESSF_CHUNKS * 32)
#define ACTIVESSF_FULL_MASK 0xffffffffu

// Record the run [x_begin, x_end) of row y as belonging to `label` (ignored unless 1 <= label <= n).
__device__ __forceinline__ void activessf_flush_run(int label, int x_begin, int x_end, int y, int n,
                                                    int* __restrict__ box,
                                                    unsigned long long* __restrict__ counts) {
    if (label < 1 || label > n) {
        return;
    }
    int* b = box + 4 * (label - 1);
    if (x_begin < b[0]) atomicMin(&b[0], x_begin);
    if (y < b[1]) atomicMin(&b[1], y);
    if (x_end > b[2]) atomicMax(&b[2], x_end);
    if (y + 1 > b[3]) atomicMax(&b[3], y + 1);
    atomicAdd(&counts[label - 1], (unsigned long long)(x_end - x_begin));
}

extern "C" __global__ void __launch_bounds__(ACTIVESSF_BLOCK)
activessf_region_stats(const int* __restrict__ labels, const int height, const int width, const int row_offset,
                       const int n, int* __restrict__ box, unsigned long long* __restrict__ counts) {
    const int lane = threadIdx.x % 32;
    const int segment = blockIdx.x * ACTIVESSF_WARPS + threadIdx.x / 32;  // the same for the whole warp
    const int segment_begin = segment * ACTIVESSF_SEGMENT;
    if (segment_begin >= width) {
        return;  // the whole warp leaves together; this kernel has no block-wide barrier
    }
    const int segment_end = min(width, segment_begin + ACTIVESSF_SEGMENT);

    for (int row_index = blockIdx.y; row_index < height; row_index += gridDim.y) {  // uniform across the warp
        const int* row = labels + (long long)row_index * width;
        const int y = row_offset + row_index;
        int open_label = 0;             // label of the run still open at the end of the last chunk
        int open_begin = segment_begin; // its first x
        for (int chunk_begin = segment_begin; chunk_begin < segment_end; chunk_begin += 32) {
            const int x = chunk_begin + lane;
            const int label = x < segment_end ? row[x] : 0;  // past the end: background, ends any run
            const int left = __shfl_up_sync(ACTIVESSF_FULL_MASK, label, 1);
            const bool head = label != (lane == 0 ? open_label : left);
            const unsigned heads = __ballot_sync(ACTIVESSF_FULL_MASK, head);

            if (lane == 0 && heads & 1u) {  // the open run ended at the previous chunk
                activessf_flush_run(open_label, open_begin, chunk_begin, y, n, box, counts);
            }
            if (lane == 0 && heads != 0 && !(heads & 1u)) {  // the open run goes on up to the first head
                activessf_flush_run(open_label, open_begin, chunk_begin + __ffs(heads) - 1, y, n, box, counts);
            }
            if (head) {
                const unsigned later = heads & (0xfffffffeu << lane);  // heads after this lane
                if (later != 0) {  // the run closes inside this chunk
                    activessf_flush_run(label, x, chunk_begin + __ffs(later) - 1, y, n, box, counts);
                }
            }
            if (heads != 0) {  // the run of the last head stays open
                const int last = 31 - __clz(heads);
                open_label = __shfl_sync(ACTIVESSF_FULL_MASK, label, last);
                open_begin = chunk_begin + last;
            }
        }
        if (lane == 0) {
            activessf_flush_run(open_label, open_begin, segment_end, y, n, box, counts);
        }
    }
}

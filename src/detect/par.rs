//! Deterministic data parallelism on rayon's pool.
//!
//! Work is cut into fixed-size blocks of rows whose results are combined in block order, so a
//! model trained on a 2-core laptop and on a 64-core server is bit-for-bit the same
//! (docs/DETECTION.md, "From CSV to score", step 4): the thread count only decides who computes a block,
//! never how floating-point sums are grouped. That is why nothing here uses rayon's `sum` or
//! `reduce`, whose grouping follows the pool's size: each block is computed by one closure
//! call, in order, and the caller combines the block results.
//!
//! Everything runs on the current rayon pool, the global one unless the caller is inside
//! `ThreadPool::install` (how the tests train with 1, 2 and 3 threads). linfa's k-means, which
//! picks the starting centroids, runs on the same pool.

use std::ops::Range;

use rayon::prelude::*;

/// Rows per block. Large enough that per-block bookkeeping vanishes, small enough that two
/// cores share the work evenly on a few hundred thousand rows.
pub(crate) const BLOCK_ROWS: usize = 8192;

/// The row range of block `b` of `0..n`.
fn block(b: usize, n: usize) -> Range<usize> {
    let start = b * BLOCK_ROWS;
    start..(start + BLOCK_ROWS).min(n)
}

/// Calls `f` on each block of `0..n` and returns the results in block order.
pub(crate) fn map_blocks<T: Send>(n: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    (0..n.div_ceil(BLOCK_ROWS))
        .into_par_iter()
        .map(|b| f(block(b, n)))
        .collect()
}

/// Calls `f(first_row, rows)` on disjoint runs of `row_len`-element rows of `data`, in
/// parallel. Each row is processed independently, so the split does not affect results.
pub(crate) fn for_rows_mut<T: Send>(
    data: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if row_len == 0 {
        // No rows to split (rayon's chunks must not be empty).
        f(0, data);
        return;
    }
    data.par_chunks_mut(BLOCK_ROWS * row_len)
        .enumerate()
        .for_each(|(b, rows)| f(b * BLOCK_ROWS, rows));
}

/// Calls `f(index, item)` on every item of `items`, in parallel.
pub(crate) fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    items.par_iter_mut().enumerate().for_each(|(i, x)| f(i, x));
}

/// Runs `f` on a pool of its own with `threads` worker threads: the tests train with several
/// pool sizes and compare the results.
#[cfg(test)]
pub(crate) fn with_threads<T: Send>(
    threads: usize,
    f: impl FnOnce() -> T + Send,
) -> Result<T, rayon::ThreadPoolBuildError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    Ok(pool.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_back_in_order() {
        let n = 5 * BLOCK_ROWS + 3;
        let starts = map_blocks(n, |r| r.start);
        let expected: Vec<usize> = (0..6).map(|b| b * BLOCK_ROWS).collect();
        assert_eq!(starts, expected);
    }

    #[test]
    fn rows_are_split_on_block_boundaries() {
        let mut rows = vec![0usize; 2 * (2 * BLOCK_ROWS + 5)];
        for_rows_mut(&mut rows, 2, |first, chunk| {
            assert_eq!(first % BLOCK_ROWS, 0);
            for (i, row) in chunk.chunks_exact_mut(2).enumerate() {
                row.fill(first + i);
            }
        });
        let expected: Vec<usize> = (0..2 * BLOCK_ROWS + 5).flat_map(|i| [i, i]).collect();
        assert_eq!(rows, expected);
    }
}

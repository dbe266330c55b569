//! Deterministic data parallelism with scoped threads.
//!
//! Work is cut into fixed-size blocks of rows whose results are combined in block order, so a
//! model trained on a 2-core laptop and on a 64-core server is bit-for-bit the same
//! (DESIGN.md, decision 8): the thread count only decides who computes a block, never how
//! floating-point sums are grouped.

use std::ops::Range;

/// Rows per block. Large enough that per-block bookkeeping vanishes, small enough that two
/// cores share the work evenly on a few hundred thousand rows.
pub(crate) const BLOCK_ROWS: usize = 8192;

/// Worker threads to use: the machine's parallelism.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The row range of block `b` of `0..n`.
fn block(b: usize, n: usize) -> Range<usize> {
    let start = b * BLOCK_ROWS;
    start..(start + BLOCK_ROWS).min(n)
}

/// Calls `f` on each block of `0..n` and returns the results in block order.
pub(crate) fn map_blocks<T: Send>(n: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    let blocks = n.div_ceil(BLOCK_ROWS);
    let t = threads().min(blocks).max(1);
    if t == 1 {
        return (0..blocks).map(|b| f(block(b, n))).collect();
    }
    let per = blocks.div_ceil(t);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..t)
            .map(|i| {
                let f = &f;
                s.spawn(move || {
                    (i * per..((i + 1) * per).min(blocks))
                        .map(|b| f(block(b, n)))
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Calls `f(first_row, rows)` on disjoint runs of `row_len`-element rows of `data`, in
/// parallel. Each row is processed independently, so the split does not affect results.
pub(crate) fn for_rows_mut<T: Send>(
    data: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let n = data.len().checked_div(row_len).unwrap_or(0);
    let t = threads().min(n.div_ceil(BLOCK_ROWS)).max(1);
    if t == 1 {
        f(0, data);
        return;
    }
    let per = n.div_ceil(t);
    std::thread::scope(|s| {
        for (i, chunk) in data.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, chunk));
        }
    });
}

/// Calls `f(index, item)` on every item of `items`, in parallel over contiguous runs.
pub(crate) fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let t = threads().min(items.len()).max(1);
    if t == 1 {
        items.iter_mut().enumerate().for_each(|(i, x)| f(i, x));
        return;
    }
    let per = items.len().div_ceil(t);
    std::thread::scope(|s| {
        for (c, chunk) in items.chunks_mut(per).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (i, x) in chunk.iter_mut().enumerate() {
                    f(c * per + i, x);
                }
            });
        }
    });
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
}

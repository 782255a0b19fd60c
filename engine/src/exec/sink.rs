//! Where finished blocks of nodes with outputs go: the [`ChunkSink`] a run's outputs implement.

use super::error::ExecError;
use crate::array::Chunk;

/// Receives every finished block of the nodes that have outputs.
pub trait ChunkSink: Send + Sync {
    /// Called once per block of node `node` (see [`crate::plan::Node::block`]; a chunk, or a merge group of
    /// chunks) whose first element is at `start`, from any thread.
    ///
    /// # Errors
    /// When the output cannot be written; the run stops.
    fn deliver(&self, node: usize, start: &[usize], block: &Chunk) -> Result<(), ExecError>;

    /// The shape of the pieces in which node `node`'s blocks may come cut ([`ChunkSink::deliver_tiles`]): `Some`
    /// only when all the sink does with them is write them into a sharded Zarr array (the shape of its inner
    /// chunks), so that a kernel can write the pieces directly. Default: `None`.
    fn tile_shape(&self, _node: usize) -> Option<Vec<usize>> {
        None
    }

    /// Takes a block of node `node` whose first element is at `start`, of shape `shape`, as its pieces of
    /// [`ChunkSink::tile_shape`] (row-major, as [`Chunk::split_grid`] cuts it). The default pastes them back
    /// into the block and delivers that.
    ///
    /// # Errors
    /// As [`ChunkSink::deliver`]; when the pieces do not tile the block.
    fn deliver_tiles(
        &self,
        node: usize,
        start: &[usize],
        shape: &[usize],
        tiles: &[Chunk],
    ) -> Result<(), ExecError> {
        let (Some(tile), Some(first)) = (self.tile_shape(node), tiles.first()) else {
            return Err(ExecError::Internal(format!(
                "node {node}: pieces delivered without a piece shape"
            )));
        };
        let grid: Vec<usize> = shape
            .iter()
            .zip(&tile)
            .map(|(s, t)| s.div_ceil(*t))
            .collect();
        let mut block = Chunk::zeros(first.dtype(), shape);
        for (idx, t) in crate::array::grid_indices(&grid).iter().zip(tiles) {
            let at: Vec<usize> = idx.iter().zip(&tile).map(|(i, t)| i * t).collect();
            block.paste(&at, t).map_err(ExecError::Internal)?;
        }
        self.deliver(node, start, &block)
    }
}

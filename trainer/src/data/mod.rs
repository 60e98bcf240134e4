//! Data: datasets (Fashion-MNIST IDX files, folders of images), the preprocessing transform,
//! the sample order (a pure function of seed, epoch and sample cursor, shardable by rank) and the
//! prefetching loader that decodes batches on worker threads ahead of the training loop.

mod dataset;
mod loader;
mod order;
mod transform;

pub use dataset::{Dataset, FashionMnist, ImageFolder, open_datasets};
pub use loader::{Batch, Loader, LoaderOptions, load_batch};
pub use order::Order;
pub use transform::Transform;

//! Data: datasets (Fashion-MNIST IDX files, folders of images, BAIR TFRecords, folders of video
//! frame shards), video preparation, clip sampling, the preprocessing transform, the cache of prepared samples, the sample order
//! (a pure function of seed, epoch and sample cursor, shardable by rank) and the prefetching
//! loader that decodes batches on worker threads ahead of the training loop.

mod bair;
mod cache;
mod clip;
mod dataset;
mod files;
mod loader;
mod order;
mod prepare_video;
pub mod tfrecord;
mod transform;
mod video_folder;
pub mod video_shard;

pub use bair::BairRecords;
pub use cache::SampleCache;
pub use clip::ClipSpec;
pub use dataset::{Dataset, FashionMnist, ImageFolder, open_datasets};
pub use loader::{Batch, Loader, LoaderOptions, load_batch};
pub use order::Order;
pub use prepare_video::{PrepareOptions, PrepareReport, prepare_videos, scaled_size};
pub use transform::Transform;
pub use video_folder::VideoFolder;

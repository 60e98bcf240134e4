//! Finding a dataset's files: every file under a folder, recursively, that a predicate accepts,
//! in sorted order (so sample indices do not depend on the file system's listing order).

use std::path::{Path, PathBuf};

use crate::TrainError;

fn walk(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, keep, out)?;
        } else if keep(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The files under `root` that `keep` accepts, sorted; an unreadable folder is an error naming it.
pub(crate) fn files_under(
    root: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, TrainError> {
    let mut out = Vec::new();
    walk(root, &keep, &mut out).map_err(|e| TrainError::io(root, e))?;
    out.sort();
    Ok(out)
}

/// True when `p`'s extension (any case) is one of `exts`.
pub(crate) fn has_extension(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
}

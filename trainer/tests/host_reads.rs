//! Tensor reads to the host go through `quantizers::host`, which counts them: these checks make
//! the count trustworthy (no library code reads around it) and show what a training step
//! reads.

use std::path::{Path, PathBuf};

/// Files allowed to read tensors directly: the counting module itself, and the Flex-only CPU
/// kernels (their "reads" are the CPU backend's own memory, never a device wait).
const EXEMPT: &[&str] = &[
    "quantizers/src/host.rs",
    "quantizers/src/cpu_rotation.rs",
    "models/src/cpu/",
];

const READS: &[&str] = &[
    ".into_data()",
    ".to_data()",
    ".into_scalar()",
    "into_data_async",
    "to_data_async",
    "into_scalar_async",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn library_code_reads_tensors_only_through_the_counting_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["quantizers", "models", "trainer", "launch"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 40, "found only {} source files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if EXEMPT.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests (at the end of a file) may read as they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // A read split over lines (`t\n    .into_data()`) is caught on its own line; a
            // line marked `// host:` (and why), or the one after it, is not a device tensor.
            let marked = line.contains("// host:") || i > 0 && lines[i - 1].contains("// host:");
            if !marked && READS.iter().any(|r| line.contains(r)) {
                found.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "tensor reads that bypass quantizers::host (use host::read* with a HostRead purpose):\n{}",
        found.join("\n")
    );
}

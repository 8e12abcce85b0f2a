//! Measures loader throughput: 513x513 training crops (scale 0.5-2.0, flip, optional colour jitter)
//! from a pack of VOC-sized (500x375) synthetic images, batch 8, all cores.
//!
//! `cargo run --release -p datasets --example loader_throughput [-- --color] [N_IMAGES]`

use std::sync::Arc;
use std::time::Instant;

use datasets::{synth_pack, AugmentConfig, Loader, LoaderConfig, Pack, SynthConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let color = args.iter().any(|a| a == "--color");
    let n: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(96);
    let dir = std::env::temp_dir().join(format!("segnet-loader-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.pack");
    let cfg = SynthConfig { num_images: n, height: 375, width: 500, ..SynthConfig::default() };
    let t = Instant::now();
    let summary = synth_pack(&path, &cfg)?;
    println!("wrote {} records ({:.1} MB) in {:.2?}", summary.records, summary.bytes as f64 / 1e6, t.elapsed());

    let pack = Arc::new(Pack::open(&path)?);
    let aug = if color { AugmentConfig::contrastive(513) } else { AugmentConfig::train(513) };
    let loader = Loader::new(pack, None, LoaderConfig::train(8, 0, aug))?;
    println!("threads: {}", rayon::current_num_threads());
    for epoch in 0..3 {
        let t = Instant::now();
        let mut images = 0;
        for b in loader.epoch(epoch) {
            images += b?.image_shape[0];
        }
        let s = t.elapsed().as_secs_f64();
        println!("epoch {epoch}: {images} crops of 513x513 in {s:.2}s = {:.1} images/s", images as f64 / s);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

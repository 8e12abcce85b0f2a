//! `segnet data pack | synth | info`: thin wrappers over the `datasets` crate with progress bars.

use crate::cli::{DataCommand, PackArgs, PackKind, SynthArgs, UnknownLabelsArg};
use anyhow::{bail, Context, Result};
use datasets::import::{
    self, CityscapesLabels, CityscapesOptions, FolderOptions, UnknownLabels, VocLabels, VocOptions,
};
use datasets::{synth_pack, Pack, SynthConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Run a `data` subcommand.
pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Pack(a) => pack(a),
        DataCommand::Synth(a) => synth(a),
        DataCommand::Info { pack, verify } => info(&pack, verify),
    }
}

fn bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// The own class list of `--classes` / `--classes-file`, checked; `None` when neither is given.
fn own_classes(a: &PackArgs) -> Result<Option<Vec<String>>> {
    Ok(match (&a.classes, &a.classes_file) {
        (Some(_), Some(_)) => bail!("--classes and --classes-file: give one of them, not both"),
        (Some(list), None) => Some(import::class_names_from_list(list.clone(), "--classes")?),
        (None, Some(file)) => Some(import::read_class_file(file).map_err(|e| anyhow::anyhow!("--classes-file: {e}"))?),
        (None, None) => None,
    })
}

fn pack(a: PackArgs) -> Result<()> {
    let class_names = own_classes(&a)?;
    let mut plan = match a.kind {
        PackKind::Voc => {
            let labels = if a.aug { VocLabels::Aug } else { VocLabels::Class };
            import::voc_items(&a.root, &a.split, &VocOptions { labels, list: None, class_names })?
        }
        PackKind::Cityscapes => {
            let labels = match a.label_map.as_str() {
                "train-ids" => CityscapesLabels::TrainIds,
                "identity" => CityscapesLabels::LabelIds,
                other => bail!("--label-map: unknown value {other:?} (expected train-ids or identity)"),
            };
            import::cityscapes_items(&a.root, &a.split, &CityscapesOptions { labels, class_names })?
        }
        PackKind::Folder => {
            let masks = match &a.masks {
                Some(m) => m.clone(),
                None => a.root.parent().map(|p| p.join("masks")).context("--masks is needed for this root")?,
            };
            let class_names =
                class_names.context("--classes NAME,NAME,... or --classes-file FILE is required for folder packs")?;
            let opts = FolderOptions { class_names, ignore_index: 255, allow_unlabeled: true };
            import::folder_items(&a.root, &masks, &opts)?
        }
    };
    plan.unknown_labels = match a.unknown_labels {
        UnknownLabelsArg::Error => UnknownLabels::Error,
        UnknownLabelsArg::Ignore => UnknownLabels::Ignore,
    };
    let pb = bar(plan.items.len(), "packing");
    let summary = import::write_pack(&plan, &a.output, Some(&mut |done, _| pb.set_position(done as u64)))
        .map_err(|e| match e {
            e @ datasets::DatasetError::LabelOutOfRange { .. } => {
                anyhow::anyhow!("{e}\n(give the classes with --classes or --classes-file, or map such values to the ignore value with --unknown-labels ignore)")
            }
            e => e.into(),
        })?;
    pb.finish_and_clear();
    println!(
        "wrote {}: {} records ({} labeled), {:.1} MB",
        summary.path.display(),
        summary.records,
        summary.labeled,
        summary.bytes as f64 / 1e6
    );
    println!("classes: {}", plan.spec.class_names.join(", "));
    if summary.unknown_to_ignore > 0 {
        println!(
            "--unknown-labels ignore: {} label pixels outside the {} classes were set to the ignore value {}",
            summary.unknown_to_ignore,
            plan.spec.num_classes(),
            plan.spec.ignore_index
        );
    }
    Ok(())
}

fn synth(a: SynthArgs) -> Result<()> {
    let cfg = SynthConfig {
        seed: a.seed,
        num_images: a.images,
        height: a.size,
        width: a.size,
        num_classes: a.classes,
        ..SynthConfig::default()
    };
    let s = synth_pack(&a.output, &cfg)?;
    println!(
        "wrote {}: {} synthetic images of {}x{}, {} classes",
        s.path.display(),
        s.records,
        a.size,
        a.size,
        cfg.num_classes
    );
    Ok(())
}

fn info(path: &std::path::Path, verify: bool) -> Result<()> {
    let p = Pack::open(path)?;
    println!("pack       {}", path.display());
    println!("records    {} ({} labeled)", p.len(), p.num_labeled());
    println!("classes    {}: {}", p.num_classes(), p.class_names().join(", "));
    println!("ignore     {}", p.ignore_index());
    println!("palette    {}", if p.palette().is_some() { "yes" } else { "no" });
    println!("file size  {:.1} MB", p.file_len() as f64 / 1e6);
    if !p.is_empty() {
        let (mut hmin, mut hmax, mut wmin, mut wmax) = (usize::MAX, 0, usize::MAX, 0);
        for i in 0..p.len() {
            let r = p.info(i)?;
            hmin = hmin.min(r.height);
            hmax = hmax.max(r.height);
            wmin = wmin.min(r.width);
            wmax = wmax.max(r.width);
        }
        println!("sizes      h {hmin}..{hmax}, w {wmin}..{wmax}");
    }
    if verify {
        p.verify()?;
        println!("verify     every record's checksum and labels are good");
    }
    Ok(())
}

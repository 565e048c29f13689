use super::*;

fn gpu(min_samples: u64) -> GpuConfig {
    GpuConfig {
        min_samples,
        vram_margin_mib: 500,
        ..GpuConfig::default()
    }
}

#[test]
fn quantiles_track_the_peaks_within_the_bucket_resolution() {
    let mut histogram = PeakHistogram::default();
    // 98 jobs near 4 GiB, two at 9 GiB: p50 ~4 GiB, p99 catches the tail.
    for i in 0..100u64 {
        histogram.observe(if i % 50 == 49 { 9_000 } else { 4_000 + i });
    }
    assert_eq!(histogram.samples, 100);
    assert_eq!(histogram.max_mib, 9_000);
    assert!(
        (4_000..=4_300).contains(&histogram.p50_mib),
        "{histogram:?}"
    );
    assert!(
        (9_000..=9_000).contains(&histogram.p99_mib),
        "{histogram:?}"
    );
    // Every bound is within 5 % above the peaks it holds.
    for bucket in histogram.buckets.keys() {
        assert!(*bucket >= 4_000, "{bucket}");
    }
}

#[test]
fn older_peaks_fade_so_a_new_input_mix_shows() {
    let mut histogram = PeakHistogram::default();
    for _ in 0..500 {
        histogram.observe(2_000);
    }
    assert!(histogram.p99_mib <= 2_100);
    for _ in 0..300 {
        histogram.observe(6_000);
    }
    // 300 new samples at DECAY 0.99 outweigh the 500 old ones by far.
    assert!(histogram.p50_mib >= 6_000, "{histogram:?}");
    assert_eq!(histogram.samples, 800);
    // The buckets stay bounded: tiny weights are dropped.
    assert!(histogram.buckets.len() <= 2);
}

#[test]
fn admission_trusts_the_measurement_only_after_min_samples() {
    let mut vram = ModelVram::new("mesh", "w1", 2_000);
    for _ in 0..4 {
        vram.observe("bytes<=1KiB", 6_000, 1);
    }
    assert_eq!(admitted_mib(2_000, Some(&vram), &gpu(5)), 2_000);
    assert!(!vram.over_declared(&gpu(5)));
    vram.observe("bytes<=1KiB", 6_000, 2);
    let admitted = admitted_mib(2_000, Some(&vram), &gpu(5));
    assert!((6_500..=6_800).contains(&admitted), "{admitted}");
    assert!(vram.over_declared(&gpu(5)));
    // A model that uses less than declared keeps its declaration.
    let mut small = ModelVram::new("seg", "w1", 8_000);
    for _ in 0..5 {
        small.observe("c", 1_000, 1);
    }
    assert_eq!(admitted_mib(8_000, Some(&small), &gpu(5)), 8_000);
    assert_eq!(admitted_mib(8_000, None, &gpu(5)), 8_000);
    // Packed beside others by its measured need, below the declaration.
    assert_eq!(packed_mib(8_000, Some(&small), &gpu(5)), 1_000 + 500);
    assert_eq!(packed_mib(8_000, None, &gpu(5)), 8_000);
    assert_eq!(
        packed_mib(8_000, Some(&small), &gpu(6)),
        8_000,
        "too few samples"
    );
}

#[test]
fn workers_fields_merge_per_model() {
    let mut a = ModelVram::new("mesh", "w1", 2_000);
    let mut b = ModelVram::new("mesh", "w2", 2_000);
    let mut c = ModelVram::new("seg", "w1", 500);
    for _ in 0..3 {
        a.observe("resolution=512", 3_000, 10);
        b.observe("resolution=1024", 7_000, 20);
        c.observe("x", 400, 5);
    }
    b.observe_out_of_memory("resolution=2048", 16_001, 30);
    b.resident_mib = Some(1_500);
    let fields: BTreeMap<String, String> = [&a, &b, &c]
        .iter()
        .map(|v| (v.field(), serde_json::to_string(v).unwrap()))
        .chain([("junk/w9".to_owned(), "not json".to_owned())])
        .collect();
    let merged = merge(fields.values());
    let mesh = &merged["mesh"];
    assert_eq!(mesh.worker, "*");
    assert_eq!(mesh.peaks.samples, 7);
    assert_eq!(mesh.peaks.max_mib, 16_001);
    assert_eq!(mesh.out_of_memory, 1);
    assert_eq!(mesh.resident_mib, Some(1_500));
    assert_eq!(mesh.classes.len(), 3);
    assert_eq!(mesh.classes["resolution=1024"].samples, 3);
    assert_eq!(merged["seg"].peaks.samples, 3);
    // Human-readable: the summary is in the stored JSON.
    let json = serde_json::to_string(&a).unwrap();
    assert!(json.contains("\"p99_mib\":3"), "{json}");
}

#[test]
fn size_classes_come_from_the_declared_input_or_the_bytes() {
    let mut inputs = ValueMap::new();
    inputs.insert("resolution".into(), Value::from(1024));
    inputs.insert("image".into(), Value::Binary(vec![0; 300_000]));
    assert_eq!(size_class(&inputs, Some("resolution")), "resolution=1024");
    assert_eq!(size_class(&inputs, None), "bytes<=512KiB");
    assert_eq!(size_class(&ValueMap::new(), None), "bytes<=1KiB");
    inputs.insert("video".into(), Value::Binary(vec![0; 3 << 20]));
    assert_eq!(size_class(&inputs, Some("missing")), "bytes<=4MiB");
}

#[test]
fn classes_are_bounded() {
    let mut vram = ModelVram::new("m", "w", 1);
    for i in 0..40 {
        vram.observe(&format!("class{i}"), 10, 1);
    }
    assert_eq!(vram.classes.len(), MAX_CLASSES + 1);
    assert!(vram.classes["other"].samples >= 24);
}

#[test]
fn a_class_need_is_its_largest_peak_until_min_samples_then_its_p99() {
    let gpu = GpuConfig {
        min_samples: 3,
        vram_margin_mib: 100,
        ..GpuConfig::default()
    };
    let mut vram = ModelVram::new("m", "w", 4000);
    assert_eq!(class_need_mib(&vram, "resolution=1024", &gpu), None);
    vram.observe_out_of_memory("resolution=1024", 8193, 1);
    // One out_of_memory: its floor plus the margin.
    assert_eq!(class_need_mib(&vram, "resolution=1024", &gpu), Some(8293));
    vram.observe("resolution=1024", 12000, 2);
    vram.observe("resolution=1024", 12000, 3);
    let need = class_need_mib(&vram, "resolution=1024", &gpu).unwrap();
    let p99 = vram.classes["resolution=1024"].p99_mib;
    assert_eq!(need, p99 + 100);
    assert!(need >= 12000 + 100);
    // Another class is unknown, whatever the model's overall figures.
    assert_eq!(class_need_mib(&vram, "resolution=256", &gpu), None);
}

#[test]
fn tiers_round_up_in_few_steps() {
    for need in [1u64, 500, 8193, 12100, 80000] {
        let tier = tier_mib(need);
        assert!(
            tier >= need && (tier as f64) <= need as f64 * 1.06 + 1.0,
            "{need} -> {tier}"
        );
    }
    // Nearby needs share a tier.
    let tiers: std::collections::BTreeSet<u64> = (12000..12500).map(tier_mib).collect();
    assert!(tiers.len() <= 2, "{tiers:?}");
}

#[test]
fn an_artifact_reference_counts_as_the_size_it_names() {
    let reference = Value::Map(vec![
        (Value::from("$artifact"), Value::from("a1b2")),
        (Value::from("size_bytes"), Value::from(3u64 << 20)),
    ]);
    let inputs: ValueMap = [("mesh".to_owned(), reference)].into_iter().collect();
    let resolved: ValueMap = [("mesh".to_owned(), Value::Binary(vec![0; 3 << 20]))]
        .into_iter()
        .collect();
    assert_eq!(size_class(&inputs, None), "bytes<=4MiB");
    assert_eq!(size_class(&inputs, None), size_class(&resolved, None));
}

#[test]
fn a_rare_big_size_class_does_not_make_the_model_big() {
    let mut vram = ModelVram::new("m", "w", 2_000);
    for i in 0..19 {
        vram.observe("resolution=512", 3_000, i);
    }
    vram.observe("resolution=2048", 12_000, 20);
    // Overall, one job in twenty is big: the p99 is the big one's.
    assert!(vram.peaks.p99_mib >= 12_000);
    // The typical classes (90 % of the jobs) are the small one.
    let typical = vram.typical_peaks();
    assert_eq!(typical.samples, 19);
    assert!(
        typical.p99_mib >= 3_000 && typical.p99_mib < 3_200,
        "{typical:?}"
    );
    assert!(admitted_mib(2_000, Some(&vram), &gpu(5)) < 3_800);
    assert!(packed_mib(2_000, Some(&vram), &gpu(5)) < 3_800);
    // The big class is known as such, for the worker's give-back.
    assert_eq!(
        class_need_mib(&vram, "resolution=2048", &gpu(5)),
        Some(12_500)
    );

    // Once big jobs are common, they are typical and the model is big.
    for i in 0..5 {
        vram.observe("resolution=2048", 12_000, 21 + i);
    }
    assert!(admitted_mib(2_000, Some(&vram), &gpu(5)) >= 12_500);
}

#[test]
fn a_load_that_peaks_above_the_jobs_is_admitted_by_its_load_peak() {
    let mut vram = ModelVram::new("m", "w", 1_000);
    for i in 0..5 {
        vram.observe("c", 3_000, i);
    }
    assert_eq!(admitted_mib(1_000, Some(&vram), &gpu(5)), 3_500);
    vram.load_peak_mib = Some(6_000);
    assert_eq!(admitted_mib(1_000, Some(&vram), &gpu(5)), 6_500);
    assert_eq!(packed_mib(1_000, Some(&vram), &gpu(5)), 6_500);
    // Merged: the highest load peak of any worker.
    let mut other = ModelVram::new("m", "w2", 1_000);
    other.load_peak_mib = Some(7_000);
    let values = [
        serde_json::to_string(&vram).unwrap(),
        serde_json::to_string(&other).unwrap(),
    ];
    assert_eq!(merge(&values)["m"].load_peak_mib, Some(7_000));
}

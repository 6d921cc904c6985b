//! Memory per series, as stated in docs/ARCHITECTURE.md.

use metrics_model::window::WindowStats;

#[test]
fn a_percentage_gauge_stays_small() {
    let mut w = WindowStats::default();
    let mut x = 0.1f64;
    while x <= 100.0 {
        w.record(x);
        x += 0.1;
    }
    let heap = w.heap_bytes();
    println!(
        "struct {} B, heap {} B",
        std::mem::size_of::<WindowStats>(),
        heap
    );
    assert!(
        heap <= 3 * 1024,
        "{heap} bytes of buckets for a 0.1..100 gauge"
    );
    assert!(std::mem::size_of::<WindowStats>() <= 128);
}

//! Tests of the PNG image, PNG plot and CSV writers.

use arrayjob_engine::output::OutputError;
use arrayjob_engine::output::csv::write_csv;
use arrayjob_engine::output::image::write_image_png;
use arrayjob_engine::output::plot::{
    PALETTE, PLOT_AREA, PLOT_SIZE, PlotFrame, PlotSpec, write_plot_png,
};
use ndarray::{Array1, Array2, Array3, arr2};

fn grey_pixels(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(path).expect("decode PNG");
    assert_eq!(
        img.color(),
        image::ColorType::L8,
        "8-bit greyscale expected"
    );
    let g = img.into_luma8();
    (g.width(), g.height(), g.into_raw())
}

#[test]
fn image_scales_min_to_black_and_max_to_white() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("mean.png");
    // normalised 0, 1/4, 1/2, 1, 0.999, NaN -> floor(t * 256) clamped to 255
    let a = arr2(&[[-1.0, 0.0, 1.0], [3.0, 2.996, f64::NAN]]);
    write_image_png(&p, a.view()).expect("write");
    let (w, h, px) = grey_pixels(&p);
    assert_eq!((w, h), (3, 2));
    assert_eq!(px, vec![0, 64, 128, 255, 255, 0]);

    let a = arr2(&[[10.0, 10.5, 11.0, 12.0]]);
    write_image_png(&p, a.view()).expect("write");
    assert_eq!(grey_pixels(&p).2, vec![0, 64, 128, 255]);
}

#[test]
fn constant_image_is_black_and_empty_image_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("flat.png");
    write_image_png(&p, Array2::from_elem((3, 4), 7.5).view()).expect("write");
    assert_eq!(grey_pixels(&p), (4, 3, vec![0; 12]));
    let e = write_image_png(&p, Array2::<f64>::zeros((0, 4)).view()).expect_err("empty");
    assert!(
        matches!(e, OutputError::Invalid { name: "data", .. }),
        "{e}"
    );
    let e = write_image_png(
        &tmp.path().join("no/such/dir.png"),
        Array2::zeros((2, 2)).view(),
    )
    .expect_err("bad dir");
    assert!(e.to_string().contains("dir.png"), "{e}");
}

#[test]
fn csv_0d_1d_and_2d_exact_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("brightness.csv");
    let v = Array1::from(vec![0.1, 2.0, -3.5e-7, 1e300, f64::NAN, 1.0 / 3.0]);
    write_csv(&p, v.view().into_dyn()).expect("write");
    let text = std::fs::read_to_string(&p).expect("read");
    assert_eq!(
        text,
        "index,value\n0,0.1\n1,2.0\n2,-3.5e-7\n3,1e300\n4,NaN\n5,0.3333333333333333\n"
    );
    let back: f64 = text
        .lines()
        .nth(6)
        .and_then(|l| l.split(',').nth(1))
        .expect("line")
        .parse()
        .expect("float");
    assert_eq!(back, 1.0 / 3.0);

    let m = arr2(&[[1.5, 2.0, 0.25], [-4.0, 0.0, 7.125]]);
    write_csv(&p, m.view().into_dyn()).expect("write");
    assert_eq!(
        std::fs::read_to_string(&p).expect("read"),
        "row,c0,c1,c2\n0,1.5,2.0,0.25\n1,-4.0,0.0,7.125\n"
    );

    write_csv(&p, ndarray::arr0(-0.125).view().into_dyn()).expect("write 0-d");
    assert_eq!(
        std::fs::read_to_string(&p).expect("read"),
        "value\n-0.125\n"
    );

    let e = write_csv(&p, Array3::<f64>::zeros((1, 1, 1)).view().into_dyn()).expect_err("3-d");
    assert!(
        matches!(e, OutputError::Invalid { name: "data", .. }),
        "{e}"
    );
}

/// Whether pixel `p` is within a small distance of `c`.
fn near(p: &image::Rgb<u8>, c: (u8, u8, u8)) -> bool {
    let d = |a: u8, b: u8| (a as i32 - b as i32).abs();
    d(p[0], c.0) + d(p[1], c.1) + d(p[2], c.2) < 30
}

/// Pixels within a small distance of `c`.
fn count_colour(img: &image::RgbImage, c: (u8, u8, u8)) -> usize {
    img.pixels().filter(|p| near(p, c)).count()
}

/// Colour of series `k`.
fn series_colour(k: usize) -> (u8, u8, u8) {
    (PALETTE[k].0, PALETTE[k].1, PALETTE[k].2)
}

/// (column, row) of the topmost (`top`) or bottommost pixel of colour `c` within columns `cols`.
fn extreme_pixel(
    img: &image::RgbImage,
    c: (u8, u8, u8),
    cols: std::ops::RangeInclusive<i32>,
    top: bool,
) -> Option<(i32, i32)> {
    let rows: Vec<u32> = if top {
        (0..img.height()).collect()
    } else {
        (0..img.height()).rev().collect()
    };
    rows.into_iter().find_map(|y| {
        cols.clone()
            .find(|&x| near(img.get_pixel(x as u32, y), c))
            .map(|x| (x, y as i32))
    })
}

/// Asserts `got` is within 2 pixels of `want` in both directions.
fn assert_near_pixel(got: Option<(i32, i32)>, want: (i32, i32), what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no pixel of the colour"));
    assert!(
        (got.0 - want.0).abs() <= 2 && (got.1 - want.1).abs() <= 2,
        "{what}: drawn at {got:?}, expected {want:?}"
    );
}

#[test]
fn plot_draws_lines_axes_and_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("brightness.png");
    let n = 200;
    let a: Vec<f64> = (0..n)
        .map(|i| 100.0 + 20.0 * (i as f64 / 15.0).sin())
        .collect();
    let b: Vec<f64> = (0..n).map(|i| 90.0 + i as f64 * 0.1).collect();
    let spec = PlotSpec {
        title: "Mean brightness per slice".into(),
        x_label: "slice".into(),
        y_label: "mean".into(),
        series: vec![("pixel (3, 4)".into(), a), ("pixel (5, 5)".into(), b)],
        log_y: false,
    };
    write_plot_png(&p, &spec).expect("plot");
    let img = image::open(&p).expect("decode").into_rgb8();
    assert_eq!((img.width(), img.height()), PLOT_SIZE);
    let c0 = (PALETTE[0].0, PALETTE[0].1, PALETTE[0].2);
    let c1 = (PALETTE[1].0, PALETTE[1].1, PALETTE[1].2);
    assert!(
        count_colour(&img, c0) > 1000,
        "first series drawn: {}",
        count_colour(&img, c0)
    );
    assert!(
        count_colour(&img, c1) > 800,
        "second series drawn: {}",
        count_colour(&img, c1)
    );
    // text and axes: dark pixels
    let dark = img
        .pixels()
        .filter(|p| p[0] < 100 && p[1] < 100 && p[2] < 100)
        .count();
    assert!(dark > 1500, "text and axes drawn: {dark}");
    // mostly white background
    let white = count_colour(&img, (255, 255, 255));
    assert!(white > (800 * 500) / 2, "background: {white}");
}

#[test]
fn log_plot_clamps_non_positive_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("power.png");
    let v: Vec<f64> = (0..100)
        .map(|i| {
            if i % 10 == 0 {
                0.0
            } else {
                1e6 / (1.0 + (i * i) as f64)
            }
        })
        .collect();
    let spec = PlotSpec {
        title: "Power spectrum".into(),
        x_label: "frequency bin".into(),
        y_label: "power".into(),
        series: vec![("power".into(), v)],
        log_y: true,
    };
    write_plot_png(&p, &spec).expect("plot");
    let img = image::open(&p).expect("decode").into_rgb8();
    assert!(count_colour(&img, (PALETTE[0].0, PALETTE[0].1, PALETTE[0].2)) > 500);

    let empty = PlotSpec {
        series: vec![("x".into(), vec![])],
        ..spec.clone()
    };
    assert!(matches!(
        write_plot_png(&p, &empty),
        Err(OutputError::Invalid { .. })
    ));
    let nan = PlotSpec {
        series: vec![("x".into(), vec![f64::NAN; 3])],
        ..spec
    };
    assert!(write_plot_png(&p, &nan).is_err());
}

#[test]
fn plot_lines_reach_their_extremes_at_the_right_pixels() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("two.png");
    // a: 50 with a peak 100 at x=37 and a dip 0 at x=48; b: 25 with a peak 40 at x=12 and a dip 10 at x=55.
    let mut a = vec![50.0; 100];
    a[37] = 100.0;
    a[48] = 0.0;
    let mut b = vec![25.0; 100];
    b[12] = 40.0;
    b[55] = 10.0;
    let spec = PlotSpec {
        title: "two series".into(),
        x_label: "slice".into(),
        y_label: "mean".into(),
        series: vec![("a".into(), a), ("b".into(), b)],
        log_y: false,
    };
    write_plot_png(&p, &spec).expect("plot");
    let img = image::open(&p).expect("decode").into_rgb8();
    let f = PlotFrame::of(&spec).expect("frame");
    assert_eq!((f.x.clone(), f.y.clone()), (0.0..99.0, -5.0..105.0));
    assert_eq!(f.pixel(0.0, 105.0), (PLOT_AREA.left, PLOT_AREA.top));
    assert_eq!(f.pixel(99.0, -5.0), (PLOT_AREA.right, PLOT_AREA.bottom));
    // Left of x=65 only: the legend (upper right) holds line samples in the series colours.
    let cols = PLOT_AREA.left..=f.pixel(65.0, 0.0).0;
    let (c0, c1) = (series_colour(0), series_colour(1));
    let top_a = extreme_pixel(&img, c0, cols.clone(), true);
    assert_near_pixel(top_a, f.pixel(37.0, 100.0), "a's maximum");
    let bottom_a = extreme_pixel(&img, c0, cols.clone(), false);
    assert_near_pixel(bottom_a, f.pixel(48.0, 0.0), "a's minimum");
    let top_b = extreme_pixel(&img, c1, cols.clone(), true);
    assert_near_pixel(top_b, f.pixel(12.0, 40.0), "b's maximum");
    let bottom_b = extreme_pixel(&img, c1, cols, false);
    assert_near_pixel(bottom_b, f.pixel(55.0, 10.0), "b's minimum");
}

#[test]
fn log_plot_draws_zeros_at_the_axis_floor_with_a_note() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("power.png");
    // 1000 / (1 + i): the smallest positive value is 10 (i=99); a 0 at i=50.
    let mut v: Vec<f64> = (0..100).map(|i| 1000.0 / (1.0 + i as f64)).collect();
    v[50] = 0.0;
    let spec = PlotSpec {
        title: "Power spectrum".into(),
        x_label: "frequency bin".into(),
        y_label: "power".into(),
        series: vec![("power".into(), v.clone())],
        log_y: true,
    };
    write_plot_png(&p, &spec).expect("plot");
    let img = image::open(&p).expect("decode").into_rgb8();
    let f = PlotFrame::of(&spec).expect("frame");
    assert_eq!(f.clamped_to, Some(1.0));
    let zero = f.pixel(50.0, 1.0);
    // At the bottom of the plotting area, well below the smallest real value.
    assert!(zero.1 > PLOT_AREA.bottom - 15, "{zero:?}");
    assert!(zero.1 - f.pixel(99.0, 10.0).1 > 50, "{zero:?}");
    let lowest = extreme_pixel(&img, series_colour(0), zero.0 - 1..=zero.0 + 1, false);
    assert_near_pixel(lowest, zero, "the zero at x=50");
    // The note "values <= 0 drawn at 1" sits top right, beside the title; without a zero there is none.
    let note_pixels = |img: &image::RgbImage| {
        (560..=PLOT_AREA.right as u32)
            .flat_map(|x| (0..PLOT_AREA.top as u32).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y)[0] < 160)
            .count()
    };
    assert!(note_pixels(&img) > 50, "note drawn: {}", note_pixels(&img));
    v[50] = 1000.0 / 51.0;
    let positive = PlotSpec {
        series: vec![("power".into(), v)],
        ..spec
    };
    assert_eq!(PlotFrame::of(&positive).expect("frame").clamped_to, None);
    write_plot_png(&p, &positive).expect("plot");
    let img = image::open(&p).expect("decode").into_rgb8();
    assert_eq!(note_pixels(&img), 0);
}

#[test]
#[ignore = "writes a sample plot to $ARRAYJOB_PLOT_SAMPLE for a person to look at"]
fn sample_plot_for_eyes() {
    let Ok(dir) = std::env::var("ARRAYJOB_PLOT_SAMPLE") else {
        return;
    };
    let n = 300;
    let series = (0..3)
        .map(|k| {
            let v = (0..n)
                .map(|i| {
                    50.0 + 10.0 * k as f64 + 8.0 * ((i as f64) / (12.0 + 5.0 * k as f64)).sin()
                })
                .collect();
            (format!("pixel ({k}, {k})"), v)
        })
        .collect();
    let spec = PlotSpec {
        title: "Brightness over time".into(),
        x_label: "slice".into(),
        y_label: "value".into(),
        series,
        log_y: false,
    };
    write_plot_png(&std::path::Path::new(&dir).join("lines.png"), &spec).expect("plot");
    // Zeros every 100 bins show the log floor and its note.
    let v: Vec<f64> = (0..500)
        .map(|i| {
            if i % 100 == 50 {
                0.0
            } else {
                1e9 / (1.0 + (i as f64 - 250.0).powi(2))
            }
        })
        .collect();
    let spec = PlotSpec {
        title: "Power spectrum".into(),
        x_label: "frequency bin".into(),
        y_label: "power".into(),
        series: vec![("power".into(), v)],
        log_y: true,
    };
    write_plot_png(&std::path::Path::new(&dir).join("log.png"), &spec).expect("plot");
}

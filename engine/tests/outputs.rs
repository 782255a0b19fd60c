//! Tests of the PNG image, PNG plot and CSV writers.

use arrayjob_engine::output::OutputError;
use arrayjob_engine::output::csv::write_csv;
use arrayjob_engine::output::image::write_image_png;
use arrayjob_engine::output::plot::{PALETTE, PLOT_SIZE, PlotSpec, write_plot_png};
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

/// Pixels within a small distance of `c`.
fn count_colour(img: &image::RgbImage, c: (u8, u8, u8)) -> usize {
    img.pixels()
        .filter(|p| {
            let d = |a: u8, b: u8| (a as i32 - b as i32).abs();
            d(p[0], c.0) + d(p[1], c.1) + d(p[2], c.2) < 30
        })
        .count()
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
    let v: Vec<f64> = (0..500)
        .map(|i| 1e9 / (1.0 + (i as f64 - 250.0).powi(2)))
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

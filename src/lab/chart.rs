//! Charts as inline SVG (plotters' SVG backend, text as SVG `<text>`): the report stays
//! one self-contained file that fetches nothing.

use super::fmt::{escape, human};
use plotters::prelude::*;

const SIZE: (u32, u32) = (760, 380);

/// The column beside a line chart that holds its legend.
const LEGEND_WIDTH: u32 = 170;

/// One line of legend per series, in the chart's colours, top to bottom.
fn legend<'a>(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    names: impl Iterator<Item = &'a str>,
) {
    for (i, name) in names.enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let y = 40 + 20 * i as i32;
        let _ = area.draw(&PathElement::new(
            vec![(6, y), (28, y)],
            color.stroke_width(3),
        ));
        let _ = area.draw(&Text::new(
            name.to_string(),
            (34, y - 7),
            ("sans-serif", 13),
        ));
    }
}

/// A series for a chart: its name and values.
pub struct Series<T> {
    pub name: String,
    pub values: T,
}

/// Grouped bars: one group per category, one bar per series. `None` leaves a gap.
pub fn bars(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series<Vec<Option<f64>>>],
) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-9)
        * 1.15;
    if categories.len() > 8 && series.len() == 1 {
        return hbars(title, y_label, categories, &series[0].values, max);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = categories.len().max(1);
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, 0f64..max)
        else {
            return svg_fallback(title);
        };
        let cats = categories.to_vec();
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .y_labels(8)
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 {
                    cats.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .y_label_formatter(&|y| human(*y))
            .draw();
        let k = series.len().max(1) as f64;
        let width = 0.8 / k;
        for (si, s) in series.iter().enumerate() {
            let color = Palette99::pick(si).to_rgba();
            let rects = s.values.iter().enumerate().filter_map(|(ci, v)| {
                v.map(|v| {
                    let x0 = ci as f64 + 0.1 + si as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled())
                })
            });
            if let Ok(drawn) = chart.draw_series(rects) {
                drawn.label(s.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            }
        }
        if series.len() > 1 {
            let _ = chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw();
        }
        let _ = root.present();
    }
    svg
}

/// Horizontal bars, one per category, names on the left: many names side by side
/// under vertical bars would run into each other.
fn hbars(
    title: &str,
    x_label: &str,
    categories: &[String],
    values: &[Option<f64>],
    max: f64,
) -> String {
    let n = categories.len();
    let height = 90 + 24 * n as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, height)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(130)
            .build_cartesian_2d(0f64..max, 0f64..n as f64)
        else {
            return svg_fallback(title);
        };
        let cats = categories.to_vec();
        // Category i sits at y = n - i - 0.5, so the first is at the top.
        let _ = chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(TRANSPARENT)
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                let slot = n as f64 - y;
                let i = slot.floor();
                if (slot - i - 0.5).abs() < 0.01 {
                    cats.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(x_label)
            .x_label_formatter(&|x| human(*x))
            .draw();
        let color = Palette99::pick(0).to_rgba();
        let _ = chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                let top = (n - i) as f64 - 0.15;
                Rectangle::new([(0.0, top - 0.7), (v, top)], color.filled())
            })
        }));
        let _ = root.present();
    }
    svg
}

/// Which axes of a line chart are logarithmic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    LogX,
    /// Both axes: values over orders of magnitude on each (a few hundred bytes per
    /// connection beside a hundred kilobytes).
    LogXY,
}

/// Lines over x, one per series, with a point at each value; on a log axis values
/// that are not positive are left out.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    scale: Scale,
    series: &[Series<Vec<(f64, f64)>>],
) -> String {
    let log_x = scale != Scale::Linear;
    let log_y = scale == Scale::LogXY;
    let kept: Vec<Series<Vec<(f64, f64)>>> = series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            values: s
                .values
                .iter()
                .copied()
                .filter(|&(x, y)| (!log_x || x > 0.0) && (!log_y || y > 0.0))
                .collect(),
        })
        .collect();
    let series = &kept[..];
    let points = || series.iter().flat_map(|s| s.values.iter());
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|p| p.0).fold(0.0f64, f64::max);
    let y_min = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = points().map(|p| p.1).fold(0.0f64, f64::max).max(1e-9);
    if !x_min.is_finite() {
        return svg_fallback(title);
    }
    let (x0, x1) = if log_x {
        (x_min * 0.8, x_max * 1.25)
    } else {
        (0.0, x_max * 1.05)
    };
    let (y0, y1) = if log_y {
        (y_min * 0.6, y_max * 1.8)
    } else {
        (0.0, y_max * 1.15)
    };
    let mut svg = String::new();
    {
        let full =
            SVGBackend::with_string(&mut svg, (SIZE.0 + LEGEND_WIDTH, SIZE.1)).into_drawing_area();
        let _ = full.fill(&WHITE);
        // The legend gets its own column: with fifteen servers it would hide the lines.
        let (root, legend_area) = full.split_horizontally(SIZE.0);
        legend(&legend_area, series.iter().map(|s| s.name.as_str()));
        macro_rules! builder {
            () => {
                ChartBuilder::on(&root)
                    .caption(title, ("sans-serif", 18))
                    .margin(12)
                    .x_label_area_size(45)
                    .y_label_area_size(70)
            };
        }
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                let _ = chart
                    .configure_mesh()
                    .light_line_style(TRANSPARENT)
                    // A log axis would otherwise label every 1..9 x 10^k and crowd.
                    .y_labels(if log_y { 6 } else { 10 })
                    .x_desc(x_label)
                    .y_desc(y_label)
                    .y_label_formatter(&|y| human(*y))
                    .x_label_formatter(&|x| human(*x))
                    .draw();
                for (i, s) in series.iter().enumerate() {
                    let color = Palette99::pick(i).to_rgba();
                    let _ =
                        chart.draw_series(LineSeries::new(s.values.clone(), color.stroke_width(2)));
                    let _ = chart
                        .draw_series(s.values.iter().map(|&p| Circle::new(p, 3, color.filled())));
                    // A direct label where the line ends: found without the legend.
                    if let Some(&last) = s.values.last() {
                        let style = ("sans-serif", 12).into_font().color(&color);
                        let _ = chart.draw_series(std::iter::once(Text::new(
                            s.name.clone(),
                            last,
                            style,
                        )));
                    }
                }
            }};
        }
        let built = match scale {
            Scale::LogXY => builder!()
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map(|c| draw!(c)),
            Scale::LogX => builder!()
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map(|c| draw!(c)),
            Scale::Linear => builder!()
                .build_cartesian_2d(x0..x1, y0..y1)
                .map(|c| draw!(c)),
        };
        if built.is_err() {
            return svg_fallback(title);
        }
        let _ = root.present();
    }
    svg
}

fn svg_fallback(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"60\"><text x=\"10\" y=\"35\" font-family=\"sans-serif\">{}: no data</text></svg>",
        SIZE.0,
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_chart_has_a_bar_per_value() {
        let svg = bars(
            "t",
            "y",
            &["a".into(), "b".into()],
            &[Series {
                name: "s".into(),
                values: vec![Some(1.0), Some(2.0)],
            }],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.matches("<rect").count() >= 3, "background + 2 bars");
        assert!(
            svg.contains(">\na\n<") || svg.contains(">a<"),
            "category label"
        );
    }

    #[test]
    fn many_categories_become_horizontal_bars_with_every_name() {
        let names: Vec<String> = (0..12).map(|i| format!("server-{i}")).collect();
        let values = (0..12).map(|i| Some(i as f64 + 1.0)).collect();
        let svg = bars(
            "t",
            "y",
            &names,
            &[Series {
                name: "s".into(),
                values,
            }],
        );
        assert!(svg.matches("<rect").count() >= 13, "background + 12 bars");
        for name in &names {
            assert!(svg.contains(name.as_str()), "{name} missing");
        }
    }

    #[test]
    fn line_chart_draws_and_empty_chart_says_so() {
        let svg = lines(
            "t",
            "x",
            "y",
            Scale::LogX,
            &[Series {
                name: "epoll".into(),
                values: vec![(1.0, 5.0), (100.0, 50.0)],
            }],
        );
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(svg.contains("epoll"));
        let empty = lines("nothing", "x", "y", Scale::Linear, &[]);
        assert!(empty.contains("no data"));
        // Log on both axes: a zero cannot be drawn and is left out, the rest is.
        let svg = lines(
            "t",
            "x",
            "y",
            Scale::LogXY,
            &[Series {
                name: "processes".into(),
                values: vec![(1_000.0, 0.0), (10_000.0, 120_000.0), (100_000.0, 400.0)],
            }],
        );
        assert!(svg.contains("processes") && !svg.contains("no data"));
        let none = lines(
            "t",
            "x",
            "y",
            Scale::LogXY,
            &[Series {
                name: "z".into(),
                values: vec![(1.0, 0.0)],
            }],
        );
        assert!(none.contains("no data"));
    }
}

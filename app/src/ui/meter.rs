//! The latency meter: a stacked bar of where one participant's mouth-to-ear delay goes, the
//! link numbers beside it, and a scrolling plot of the history.

use super::style::STAGE_COLORS;
use crate::engine::receive::PeerStats;
use crate::history::History;
use crate::latency_stages::Stage;
use egui::{Rect, Role, Sense, Ui, WidgetInfo, pos2, vec2};
use egui_plot::{Line, LineStyle, Plot, PlotPoints, uniform_grid_spacer};

/// One line saying what a stage breakdown adds up to.
pub fn breakdown_text(p: &PeerStats) -> String {
    p.stages.breakdown(1)
}

/// The stacked bar for one participant, scaled so `scale_ms` fills the width.
pub fn stage_bar(ui: &mut Ui, name: &str, p: &PeerStats, scale_ms: f64) {
    let width = ui.available_width().clamp(120.0, 560.0);
    let (rect, response) = ui.allocate_exact_size(vec2(width, 16.0), Sense::hover());
    let painter = ui.painter();
    painter.rect_filled(rect, 4.0, ui.visuals().faint_bg_color);
    let mut x = rect.left();
    let px_per_ms = (f64::from(rect.width()) / scale_ms.max(1.0)) as f32;
    for (value, color) in p.stages.values().iter().zip(STAGE_COLORS) {
        let w = (*value as f32 * px_per_ms).max(0.0);
        if w <= 0.0 {
            continue;
        }
        let seg = Rect::from_min_max(
            pos2(x, rect.top()),
            pos2((x + w).min(rect.right()), rect.bottom()),
        );
        painter.rect_filled(seg, 0.0, color);
        x += w;
    }
    let text = breakdown_text(p);
    let label = format!("Latency from {name}: {text}");
    response.widget_info(|| WidgetInfo::labeled(Role::Meter, true, &label));
    response.on_hover_text(text);
}

/// Colour key for the stages.
pub fn legend(ui: &mut Ui) {
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = vec2(4.0, 2.0);
        ui.spacing_mut().interact_size.y = 14.0;
        for (name, color) in Stage::ALL.map(Stage::name).iter().zip(STAGE_COLORS) {
            let (rect, _) = ui.allocate_exact_size(vec2(10.0, 10.0), Sense::hover());
            ui.painter().rect_filled(rect, 2.0, color);
            ui.label(egui::RichText::new(*name).small());
            ui.add_space(2.0);
        }
    });
}

/// The numbers next to the bar.
pub fn link_numbers(p: &PeerStats, recent_loss: f64) -> String {
    let rtt = p.rtt_ms.map_or("–".to_string(), |r| format!("{r:.1} ms"));
    format!(
        "RTT {rtt} · jitter {:.1} ms · lost {} ({:.1} % recently) · recovered by FEC {}, by DRED {} · concealed {}",
        p.jitter_ms,
        p.packets_lost.max(0),
        recent_loss * 100.0,
        p.fec_recovered,
        p.dred_recovered,
        p.concealed
    )
}

/// One colour per person in the plot.
const PALETTE: [egui::Color32; 4] = [
    egui::Color32::from_rgb(0x2f, 0x8f, 0x83),
    egui::Color32::from_rgb(0x5b, 0x8d, 0xd6),
    egui::Color32::from_rgb(0xc0, 0x6c, 0x84),
    egui::Color32::from_rgb(0xe0, 0x9f, 0x3e),
];

/// Seconds of history the plot shows.
pub const PLOT_SECONDS: f64 = 120.0;

/// Mouth-to-ear (solid) and jitter-buffer delay (dashed) per participant over the last
/// [`PLOT_SECONDS`], the newest sample at 0 on the x axis.
pub fn history_plot(ui: &mut Ui, history: &History) {
    let newest = history
        .series
        .values()
        .filter_map(|s| s.back().map(|x| x.t))
        .fold(0.0, f64::max);
    let highest = history
        .series
        .values()
        .flat_map(|s| s.iter().filter(|x| newest - x.t <= PLOT_SECONDS))
        .map(|x| x.stages.total_ms)
        .fold(0.0, f64::max);
    // Round the y range up to a multiple of 50 ms so it does not jump with every sample.
    let top = ((highest * 1.15 / 50.0).ceil() * 50.0).max(100.0);
    let response = Plot::new("latency-history")
        .height(170.0)
        .x_grid_spacer(uniform_grid_spacer(|_| [60.0, 30.0, 10.0]))
        .y_grid_spacer(uniform_grid_spacer(|g| {
            if g.bounds.1 - g.bounds.0 > 250.0 {
                [200.0, 100.0, 20.0]
            } else {
                [100.0, 50.0, 10.0]
            }
        }))
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .show_crosshair(false)
        .auto_bounds(false)
        .y_axis_min_width(28.0)
        .x_axis_label("seconds ago")
        .y_axis_label("ms")
        .show(ui, |plot| {
            plot.set_plot_bounds_x(-PLOT_SECONDS..=0.0);
            plot.set_plot_bounds_y(0.0..=top);
            for (i, (name, series)) in history.series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                let recent = || series.iter().filter(|s| newest - s.t <= PLOT_SECONDS + 1.0);
                let total: PlotPoints = recent()
                    .map(|s| [s.t - newest, s.stages.total_ms])
                    .collect();
                let jb: PlotPoints = recent()
                    .map(|s| [s.t - newest, s.stages.jitter_buffer_ms])
                    .collect();
                plot.line(
                    Line::new(format!("{name}: mouth-to-ear"), total)
                        .color(color)
                        .width(2.0),
                );
                plot.line(
                    Line::new(format!("{name}: jitter buffer"), jb)
                        .color(color)
                        .style(LineStyle::dashed_loose())
                        .width(1.5),
                );
            }
        });
    // The key: one colour per person; solid is mouth-to-ear, dashed the jitter buffer.
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing = vec2(4.0, 2.0);
        ui.spacing_mut().interact_size.y = 14.0;
        for (i, name) in history.series.keys().enumerate() {
            let (rect, _) = ui.allocate_exact_size(vec2(14.0, 10.0), Sense::hover());
            ui.painter().line_segment(
                [rect.left_center(), rect.right_center()],
                egui::Stroke::new(2.5, PALETTE[i % PALETTE.len()]),
            );
            ui.label(egui::RichText::new(name).small());
            ui.add_space(4.0);
        }
        ui.label(
            egui::RichText::new("solid: mouth-to-ear · dashed: jitter buffer")
                .small()
                .weak(),
        );
    });
    let label = format!(
        "Latency history plot, {} participants",
        history.series.len()
    );
    response
        .response
        .widget_info(|| WidgetInfo::labeled(Role::Figure, true, &label));
}

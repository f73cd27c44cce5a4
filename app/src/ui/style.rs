//! Look and feel: a calm palette for light and dark, card frames, and the small custom-drawn
//! indicators (speaking ring, connection bars, level meter). Every custom-drawn widget reports
//! an AccessKit label so screen readers and tests can find it.

use crate::controller::LinkQuality;
use egui::{
    Color32, CornerRadius, FontFamily, FontId, Margin, Rect, Response, Role, Sense, Stroke,
    TextStyle, Theme, Ui, Vec2, WidgetInfo, vec2,
};

/// Accent (buttons, selection): a quiet teal.
pub const ACCENT: Color32 = Color32::from_rgb(0x2f, 0x8f, 0x83);
pub const ACCENT_DARK: Color32 = Color32::from_rgb(0x4f, 0xb3, 0xa5);
/// Speaking indicator.
pub const SPEAKING: Color32 = Color32::from_rgb(0x3b, 0xb2, 0x73);
/// Muted / leave.
pub const DANGER: Color32 = Color32::from_rgb(0xd9, 0x5b, 0x5b);
pub const WARN: Color32 = Color32::from_rgb(0xe0, 0x9f, 0x3e);

/// Colours of the latency stages, in order (capture … playback): sender side in blues,
/// network grey, receiver side in greens and ambers.
pub const STAGE_COLORS: [Color32; 7] = [
    Color32::from_rgb(0x5b, 0x8d, 0xd6), // capture
    Color32::from_rgb(0x7a, 0x9f, 0xe0), // processing
    Color32::from_rgb(0x9d, 0xb5, 0xe8), // encode
    Color32::from_rgb(0x9a, 0x9a, 0xa6), // network
    Color32::from_rgb(0xe0, 0xa4, 0x58), // jitter buffer
    Color32::from_rgb(0x8c, 0xc0, 0x84), // decode
    Color32::from_rgb(0x5f, 0xa8, 0x7c), // playback
];

/// Installs fonts sizes, spacing and both palettes.
pub fn install(ctx: &egui::Context) {
    ctx.all_styles_mut(|style| {
        style.text_styles = [
            (
                TextStyle::Heading,
                FontId::new(22.0, FontFamily::Proportional),
            ),
            (TextStyle::Body, FontId::new(15.0, FontFamily::Proportional)),
            (
                TextStyle::Button,
                FontId::new(15.0, FontFamily::Proportional),
            ),
            (
                TextStyle::Small,
                FontId::new(12.5, FontFamily::Proportional),
            ),
            (
                TextStyle::Monospace,
                FontId::new(13.5, FontFamily::Monospace),
            ),
        ]
        .into();
        style.spacing.item_spacing = vec2(10.0, 10.0);
        style.spacing.button_padding = vec2(14.0, 7.0);
        style.spacing.interact_size.y = 30.0;
        style.spacing.slider_width = 140.0;
        style.spacing.text_edit_width = 320.0;
    });
    ctx.style_mut_of(Theme::Light, |style| {
        let v = &mut style.visuals;
        v.panel_fill = Color32::from_rgb(0xf4, 0xf5, 0xf7);
        v.window_fill = Color32::WHITE;
        v.extreme_bg_color = Color32::from_rgb(0xfb, 0xfb, 0xfc);
        v.faint_bg_color = Color32::from_rgb(0xee, 0xf0, 0xf3);
        v.selection.bg_fill = ACCENT.gamma_multiply(0.35);
        v.selection.stroke = Stroke::new(1.0, ACCENT);
        v.hyperlink_color = ACCENT;
        round(v, 8);
    });
    ctx.style_mut_of(Theme::Dark, |style| {
        let v = &mut style.visuals;
        v.panel_fill = Color32::from_rgb(0x17, 0x19, 0x1e);
        v.window_fill = Color32::from_rgb(0x20, 0x23, 0x2a);
        v.extreme_bg_color = Color32::from_rgb(0x12, 0x14, 0x18);
        v.faint_bg_color = Color32::from_rgb(0x24, 0x27, 0x2e);
        v.selection.bg_fill = ACCENT_DARK.gamma_multiply(0.45);
        v.selection.stroke = Stroke::new(1.0, ACCENT_DARK);
        v.hyperlink_color = ACCENT_DARK;
        round(v, 8);
    });
}

fn round(v: &mut egui::Visuals, r: u8) {
    for w in [
        &mut v.widgets.noninteractive,
        &mut v.widgets.inactive,
        &mut v.widgets.hovered,
        &mut v.widgets.active,
        &mut v.widgets.open,
    ] {
        w.corner_radius = CornerRadius::same(r);
    }
    v.window_corner_radius = CornerRadius::same(12);
}

pub fn accent(ui: &Ui) -> Color32 {
    if ui.visuals().dark_mode {
        ACCENT_DARK
    } else {
        ACCENT
    }
}

/// The central panel, without a fill of its own: the window is cleared to the panel colour
/// already (`NatterApp::clear_color`), and a second, window-sized fill would cost the software
/// rasteriser (Mesa's llvmpipe, where there is no GPU) a shaded pass over every pixel of the
/// window at each repaint.
pub fn central_panel(ui: &Ui) -> egui::CentralPanel {
    egui::CentralPanel::default()
        .frame(egui::Frame::central_panel(ui.style()).fill(Color32::TRANSPARENT))
}

/// A card: the window fill with a hairline border and generous padding.
pub fn card(ui: &Ui) -> egui::Frame {
    let v = ui.visuals();
    egui::Frame::new()
        .fill(v.window_fill)
        .stroke(Stroke::new(
            1.0,
            if v.dark_mode {
                Color32::from_rgb(0x2e, 0x32, 0x3a)
            } else {
                Color32::from_rgb(0xe2, 0xe5, 0xea)
            },
        ))
        .corner_radius(CornerRadius::same(12))
        .inner_margin(Margin::same(18))
}

/// A banner for errors and warnings.
pub fn banner(ui: &Ui, color: Color32) -> egui::Frame {
    egui::Frame::new()
        .fill(color.gamma_multiply(if ui.visuals().dark_mode { 0.25 } else { 0.15 }))
        .stroke(Stroke::new(1.0, color))
        .corner_radius(CornerRadius::same(10))
        .inner_margin(Margin::same(12))
}

/// A filled primary button.
pub fn primary(ui: &mut Ui, text: &str) -> Response {
    let fill = accent(ui);
    ui.add(
        egui::Button::new(egui::RichText::new(text).color(Color32::WHITE).strong())
            .fill(fill)
            .min_size(vec2(0.0, 34.0)),
    )
}

/// A round speaking indicator: a ring that lights up while the participant speaks.
pub fn speaking_dot(ui: &mut Ui, name: &str, speaking: bool, muted: bool) -> Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(22.0), Sense::hover());
    let c = rect.center();
    let painter = ui.painter();
    let idle = ui.visuals().weak_text_color().gamma_multiply(0.5);
    if speaking {
        painter.circle_filled(c, 10.0, SPEAKING.gamma_multiply(0.25));
        painter.circle_filled(c, 6.5, SPEAKING);
    } else if muted {
        painter.circle_stroke(c, 6.5, Stroke::new(1.5, DANGER));
        painter.line_segment(
            [c + vec2(-4.5, 4.5), c + vec2(4.5, -4.5)],
            Stroke::new(1.5, DANGER),
        );
    } else {
        painter.circle_stroke(c, 6.5, Stroke::new(1.5, idle));
    }
    let state = if speaking {
        "speaking"
    } else if muted {
        "muted"
    } else {
        "silent"
    };
    let label = format!("{name} is {state}");
    response.widget_info(|| WidgetInfo::labeled(Role::Image, true, &label));
    response.on_hover_text(format!("{name}: {state}"))
}

/// Four signal bars, filled according to the link quality.
/// One dot for a person's connection in the simple view: green good, amber fair, red poor.
pub fn quality_dot(ui: &mut Ui, who: &str, quality: LinkQuality) -> Response {
    let (rect, response) = ui.allocate_exact_size(Vec2::splat(14.0), Sense::hover());
    let color = match quality {
        LinkQuality::Unknown => ui.visuals().weak_text_color(),
        LinkQuality::Poor => DANGER,
        LinkQuality::Fair => WARN,
        LinkQuality::Good => SPEAKING,
    };
    ui.painter().circle_filled(rect.center(), 5.0, color);
    let label = format!("Connection to {who}: {}", quality.describe());
    response.widget_info(|| WidgetInfo::labeled(Role::Image, true, &label));
    response.on_hover_text(label)
}

pub fn quality_bars(ui: &mut Ui, who: &str, quality: LinkQuality, detail: &str) -> Response {
    let (rect, response) = ui.allocate_exact_size(vec2(22.0, 18.0), Sense::hover());
    let (filled, color) = match quality {
        LinkQuality::Unknown => (0, ui.visuals().weak_text_color()),
        LinkQuality::Poor => (1, DANGER),
        LinkQuality::Fair => (2, WARN),
        LinkQuality::Good => (4, SPEAKING),
    };
    let empty = ui.visuals().weak_text_color().gamma_multiply(0.35);
    let painter = ui.painter();
    for i in 0..4 {
        let h = 5.0 + 3.5 * i as f32;
        let x = rect.left() + 1.0 + i as f32 * 5.5;
        let bar = Rect::from_min_max(
            egui::pos2(x, rect.bottom() - h),
            egui::pos2(x + 3.5, rect.bottom()),
        );
        painter.rect_filled(bar, 1.0, if i < filled { color } else { empty });
    }
    let label = format!("Connection quality for {who}: {}", quality.describe());
    response.widget_info(|| WidgetInfo::labeled(Role::Image, true, &label));
    response.on_hover_text(if detail.is_empty() {
        label.clone()
    } else {
        format!("{label}\n{detail}")
    })
}

/// A horizontal level meter for the microphone (scale: `view_model::meter_fraction`), green
/// while `active`, with the voice-activation threshold as a vertical line when given.
pub fn level_meter(
    ui: &mut Ui,
    width: f32,
    level_db: f32,
    active: bool,
    threshold_db: Option<f32>,
) -> Response {
    use crate::controller::view_model::meter_fraction;
    let (rect, response) = ui.allocate_exact_size(vec2(width, 8.0), Sense::hover());
    let painter = ui.painter();
    painter.rect_filled(rect, 4.0, ui.visuals().faint_bg_color);
    let mut fill = rect;
    fill.set_width(rect.width() * meter_fraction(level_db));
    let color = if active {
        SPEAKING
    } else {
        ui.visuals().weak_text_color()
    };
    painter.rect_filled(fill, 4.0, color);
    if let Some(t) = threshold_db {
        let x = rect.left() + rect.width() * meter_fraction(t);
        painter.line_segment(
            [
                egui::pos2(x, rect.top() - 3.0),
                egui::pos2(x, rect.bottom() + 3.0),
            ],
            Stroke::new(2.0, ui.visuals().strong_text_color()),
        );
    }
    let label = format!("Microphone level {level_db:.0} dBFS");
    response.widget_info(|| WidgetInfo::labeled(Role::Meter, true, &label));
    response.on_hover_text(label)
}

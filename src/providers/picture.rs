//! The simulated provider's pictures: a small, deterministic PNG per prompt and aspect ratio —
//! a sky gradient, a sun and a few hills whose colours and places come from the prompt's hash.

use sha2::{Digest, Sha256};

/// The longer side of every picture, in pixels.
const LONG_SIDE: u32 = 256;

/// Width and height for an aspect ratio like `16:9`; square for anything unreadable.
pub fn size_for(aspect_ratio: &str) -> (u32, u32) {
    let parsed = aspect_ratio.split_once(':').and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 && w >= h => (LONG_SIDE, (LONG_SIDE * h / w).max(1)),
        Some((w, h)) if w > 0 && h > 0 => ((LONG_SIDE * w / h).max(1), LONG_SIDE),
        _ => (LONG_SIDE, LONG_SIDE),
    }
}

pub fn render(prompt: &str, aspect_ratio: &str) -> Vec<u8> {
    let seed: [u8; 32] = Sha256::digest(prompt.as_bytes()).into();
    let (width, height) = size_for(aspect_ratio);
    let top = [seed[0], seed[1], seed[2]];
    let bottom = [seed[3], seed[4], seed[5]];
    let sun = [255, 200u8.saturating_add(seed[6] % 56), seed[7] / 2];
    let hill = [seed[8] / 3, 80 + seed[9] / 3, seed[10] / 3];
    let sun_x = (u32::from(seed[11]) * width / 255) as f32;
    let sun_y = (u32::from(seed[12]) * height / 512) as f32;
    let sun_r = (height as f32) * (0.08 + f32::from(seed[13]) / 2550.0);
    let phase = f32::from(seed[14]) / 40.0;

    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        let t = y as f32 / height as f32;
        for x in 0..width {
            let (fx, fy) = (x as f32, y as f32);
            let horizon = height as f32 * (0.7 + 0.08 * ((fx / width as f32) * 6.0 + phase).sin());
            let colour = if fy > horizon {
                hill
            } else if (fx - sun_x).powi(2) + (fy - sun_y).powi(2) < sun_r.powi(2) {
                sun
            } else {
                mix(top, bottom, t)
            };
            pixels.extend_from_slice(&colour);
        }
    }
    encode(width, height, &pixels)
}

fn mix(a: [u8; 3], b: [u8; 3], t: f32) -> [u8; 3] {
    let channel = |i: usize| (f32::from(a[i]) * (1.0 - t) + f32::from(b[i]) * t) as u8;
    [channel(0), channel(1), channel(2)]
}

fn encode(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // Writing into a Vec with a correct header and exactly width*height*3 bytes cannot fail.
    let written = encoder.write_header().and_then(|mut writer| writer.write_image_data(rgb));
    debug_assert!(written.is_ok());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_aspect_ratio() {
        assert_eq!(size_for("1:1"), (256, 256));
        assert_eq!(size_for("16:9"), (256, 144));
        assert_eq!(size_for("9:16"), (144, 256));
        assert_eq!(size_for("21:9"), (256, 109));
        assert_eq!(size_for("nonsense"), (256, 256));
    }

    #[test]
    fn pictures_are_valid_pngs_and_deterministic() {
        let a = render("a lake", "16:9");
        assert_eq!(a, render("a lake", "16:9"));
        assert_ne!(a, render("a mountain", "16:9"));
        let decoder = png::Decoder::new(std::io::Cursor::new(&a));
        let reader = decoder.read_info().expect("a valid PNG");
        assert_eq!((reader.info().width, reader.info().height), (256, 144));
    }
}

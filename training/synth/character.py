"""Draw a flat-shaded cartoon presenter from one frame of keypoints (numpy + cv2 only).

:func:`draw_frame` paints, back to front: studio backdrop, hair behind the head, neck, shirt (pattern,
neckline), head (ears, face from the jaw points plus a forehead arc, hair cap, eyes with iris and
lids, brows, nose, lips with a dark inner mouth and a teeth hint), arms with sleeves, then hands
(palm and fingers along the 21 hand points) in front of everything. Every shape is anti-aliased and
placed with sub-pixel precision; sizes scale with the person (face unit = half jaw width).

Missing points (confidence <= 0.3) are tolerated: hips are extrapolated below the shoulders, a hand
without points becomes a mitten at the wrist, a head without face points is drawn from the body's
nose / eyes / ears, and parts whose anchor points are all missing are left out.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from ...pose.keypoints import B, BODY, FACE, HAND_FINGERS, LHAND, N_POINTS, RHAND
from .identity import Identity
from .templates import (
    CHIN_Y, EYE_CENTRE_X, FACE_HEAD_TOP, FACE_UNIT_FRACTION, HAIR_TOP, SHOULDER_HALF_UNITS, face_frame,
)

__all__ = ["Identity", "draw_frame", "draw_sequence", "background"]

CONF = 0.3
_BACK_TOP = -HAIR_TOP + 0.1   # hair behind the head reaches a little above the cap
_SHIFT = 4
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA


# --------------------------------------------------------------------------------------------------
# small drawing helpers (RGB colours, sub-pixel coordinates)
# --------------------------------------------------------------------------------------------------
def _c(color) -> tuple[int, int, int]:
    return color if type(color) is tuple else tuple(int(v) for v in color)  # type: ignore[return-value]


def _shade(color, f: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(v * f))) for v in color)  # type: ignore[return-value]


def _mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _fx(pts) -> np.ndarray:
    return np.rint(np.asarray(pts, np.float64) * _ONE).astype(np.int32)


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _width(w: float) -> int:
    return max(1, int(round(w)))


def _poly(img: np.ndarray, pts: np.ndarray, color) -> None:
    if len(pts) >= 3:
        cv2.fillPoly(img, [_fx(pts)], _c(color), _AA, _SHIFT)


def _polyline(img: np.ndarray, pts: np.ndarray, color, thickness: float, closed: bool = False) -> None:
    if len(pts) >= 2:
        cv2.polylines(img, [_fx(pts)], closed, _c(color), _width(thickness), _AA, _SHIFT)


def _polylines(img: np.ndarray, chains: list, color, thickness: float) -> None:
    """Several open polylines (each ``[N, 2]``) in one call."""
    if chains:
        cv2.polylines(img, [_fx(c) for c in chains], False, _c(color), _width(thickness), _AA, _SHIFT)


def _line(img: np.ndarray, a, b, color, thickness: float) -> None:
    cv2.line(img, _pt(a), _pt(b), _c(color), _width(thickness), _AA, _SHIFT)


def _disc(img: np.ndarray, centre, radius: float, color) -> None:
    cv2.circle(img, _pt(centre), max(1, int(round(radius * _ONE))), _c(color), -1, _AA, _SHIFT)


def _ellipse(img: np.ndarray, centre, axes, angle_deg: float, color) -> None:
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, _pt(centre), ax, float(angle_deg), 0, 360, _c(color), -1, _AA, _SHIFT)


def _limb(img: np.ndarray, pts: list, color, width: float, outline) -> None:
    """A thick rounded polyline with a darker outline (cv2 lines have round caps)."""
    chain = np.asarray(pts, np.float64)
    _polyline(img, chain, outline, width + 2)
    _polyline(img, chain, color, width)


def _clipped(img: np.ndarray, clip_poly: np.ndarray, paint) -> None:
    """Run ``paint(layer, offset)`` on a copy of the clip polygon's bounding box and keep only the
    pixels inside the polygon (hard edge: callers draw an anti-aliased outline over it)."""
    h, w = img.shape[:2]
    x0, y0 = np.floor(clip_poly.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(clip_poly.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    roi = img[y0:y1, x0:x1]
    mask = np.zeros(roi.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_fx(clip_poly - (x0, y0))], 255, cv2.LINE_8, _SHIFT)
    layer = roi.copy()
    paint(layer, np.array([x0, y0], float))
    cv2.copyTo(layer, mask, roi)


# --------------------------------------------------------------------------------------------------
# backdrop
# --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def background(identity: Identity, size: int) -> np.ndarray:
    """The identity's studio backdrop ``[size, size, 3]`` uint8 (cached, read-only)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    top, bottom = np.asarray(identity.bg_top, np.float32), np.asarray(identity.bg_bottom, np.float32)
    img = np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).copy()
    rng = np.random.default_rng([identity.seed, 0xB6])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    accent = np.asarray(identity.bg_accent, np.float32)
    if identity.bg_style == "spot":
        cx = 0.5 + identity.offset_x + rng.uniform(-0.1, 0.1)
        r2 = ((xx - cx) / 0.45) ** 2 + ((yy - 0.38) / 0.55) ** 2
        glow = np.exp(-r2 * 1.5)[..., None]
        img = img * (1 - 0.45 * glow) + np.minimum(top * 1.35 + 30, 255) * 0.45 * glow
    elif identity.bg_style == "panels":
        n = int(rng.integers(3, 7))
        band = np.floor(xx * n).astype(int) % 2 == 1
        img[band] = img[band] * 0.86
        img = img.astype(np.float32)
    elif identity.bg_style == "screen":
        side = rng.choice([-1.0, 1.0])
        x0 = 0.5 + side * rng.uniform(0.28, 0.34)
        box = (np.abs(xx - x0) < 0.2) & (yy > rng.uniform(0.12, 0.25)) & (yy < rng.uniform(0.55, 0.7))
        img[box] = img[box] * 0.3 + accent * 0.7
    vignette = 1.0 - 0.18 * (((xx - 0.5) / 0.7) ** 2 + ((yy - 0.45) / 0.8) ** 2)
    img = np.clip(img * vignette[..., None], 0, 255).astype(np.uint8)
    img.setflags(write=False)
    return img


# --------------------------------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------------------------------
class _Figure:
    """One frame's keypoints with presence flags and derived sizes."""

    def __init__(self, points: np.ndarray, identity: Identity, size: int):
        self.p = points[:, :2].astype(np.float64)
        self.ok = points[:, 2] > CONF
        self.id = identity
        self.size = size
        self.line = max(1.0, size / 256.0)              # outline width
        self.u = self._unit()
        self.skin = identity.skin
        self.skin_dark = _shade(identity.skin, 0.72)
        self.outline = _shade(identity.skin, 0.5)

    def _unit(self) -> float:
        rs, ls = B["r_shoulder"], B["l_shoulder"]
        if self.ok[rs] and self.ok[ls]:
            w = np.linalg.norm(self.p[rs] - self.p[ls])
            if w > 1:
                return float(w / (2 * SHOULDER_HALF_UNITS * self.id.shoulder_scale))
        f = FACE.start
        if self.ok[f] and self.ok[f + 16]:
            return float(np.linalg.norm(self.p[f] - self.p[f + 16]) / 2)
        return FACE_UNIT_FRACTION * self.size

    def has(self, *idx: int) -> bool:
        return bool(all(self.ok[i] for i in idx))

    # ------------------------------------------------------------------ head frame
    def head(self):
        """(centre, ex, ey, sx, sy) of the head in pixels per face unit, or None (computed once)."""
        if not hasattr(self, "_head"):
            self._head = self._find_head()
        return self._head

    def _find_head(self):
        face = self.p[FACE]
        fr = face_frame(face, self.ok[FACE])
        if fr is not None:
            return fr
        nose = B["nose"]
        if not self.ok[nose]:
            return None
        u = self.u
        ex = np.array([1.0, 0.0])
        for a, b, half in ((B["r_eye"], B["l_eye"], EYE_CENTRE_X), (B["r_ear"], B["l_ear"], 1.02)):
            if self.has(a, b):
                d = self.p[b] - self.p[a]
                if np.linalg.norm(d) > 1e-3:
                    ex = d / np.linalg.norm(d)
                    u = np.linalg.norm(d) / (2 * half)
                    break
        ey = np.array([-ex[1], ex[0]])
        centre = self.p[nose] - 0.6 * u * ey
        return centre, ex, ey, u, u


def _to_img(frame, local: np.ndarray) -> np.ndarray:
    centre, ex, ey, sx, sy = frame
    local = np.asarray(local, float)
    return centre + local[..., :1] * sx * ex + local[..., 1:2] * sy * ey


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 16, power: float = 1.0) -> np.ndarray:
    """Points of a (super-)ellipse arc in local coordinates, angles in radians (y down)."""
    a = np.linspace(a0, a1, n)
    c, s = np.cos(a), np.sin(a)
    return np.stack([cx + rx * np.sign(c) * np.abs(c) ** power, cy + ry * np.sign(s) * np.abs(s) ** power], axis=1)


def _skull(top: float = FACE_HEAD_TOP, widen: float = 1.0) -> np.ndarray:
    """Forehead/skull outline from the person's left temple (x=+1, y=0) over the top to the right."""
    return _arc(0.0, 0.0, 1.0 * widen, -top, 0.0, -np.pi, 20, power=0.8)


# ------------------------------------------------------------------ hair
def _hair_back(img: np.ndarray, fig: _Figure, hf) -> None:
    style = fig.id.hair_style
    col = _shade(fig.id.hair_color, 0.85)
    if style == "long":
        local = np.concatenate([_arc(0, 0, 1.28, _BACK_TOP, 0.0, -np.pi, 20, 0.8),
                                [(-1.32, 1.2), (-1.4, 3.3), (1.4, 3.3), (1.32, 1.2)]])
    elif style == "bob":
        local = np.concatenate([_arc(0, 0, 1.25, _BACK_TOP, 0.0, -np.pi, 20, 0.8),
                                [(-1.3, 0.9), (-1.2, 1.45), (1.2, 1.45), (1.3, 0.9)]])
    elif style == "curly":
        pts = _arc(0, -0.1, 1.35, _BACK_TOP, 0.15, -np.pi - 0.15, 14)
        for q in pts:
            _disc(img, _to_img(hf, q), 0.42 * hf[3], col)
        _poly(img, _to_img(hf, pts), col)
        return
    else:
        return
    _poly(img, _to_img(hf, local), col)


def _hair_front(img: np.ndarray, fig: _Figure, hf) -> None:
    style = fig.id.hair_style
    col = fig.id.hair_color
    if style == "bald":
        side = [(1.04, 0.15), (1.06, -0.4), (0.92, -0.62), (0.85, -0.35), (0.9, 0.1)]
        for sgn in (1.0, -1.0):
            _poly(img, _to_img(hf, np.array(side) * (sgn, 1.0)), col)
        return
    outer = _arc(0.0, 0.02, 1.08, -HAIR_TOP, 0.05, -np.pi - 0.05, 22, power=0.8)
    if style == "buzz":
        col = _mix(col, fig.skin, 0.35)
        hairline = [(-0.98, -0.3), (-0.7, -0.75), (0.0, -0.9), (0.7, -0.75), (0.98, -0.3)]
    elif style == "fringe":
        hairline = [(-1.02, 0.05), (-0.95, -0.42), (-0.5, -0.4), (0.0, -0.38), (0.5, -0.4), (0.95, -0.42), (1.02, 0.05)]
    elif style == "side_part":
        hairline = [(-1.02, 0.0), (-0.9, -0.55), (-0.4, -0.85), (0.2, -0.62), (0.7, -0.55), (1.0, -0.35), (1.03, 0.05)]
    elif style in ("bob", "long"):
        hairline = [(-1.05, 0.3), (-0.95, -0.45), (-0.3, -0.65), (0.1, -0.85), (0.4, -0.62), (0.95, -0.5), (1.05, 0.3)]
    else:  # short, bun, curly
        hairline = [(-1.02, 0.0), (-0.9, -0.5), (-0.5, -0.7), (0.0, -0.74), (0.5, -0.7), (0.9, -0.5), (1.02, 0.0)]
    # The outer arc runs from the person's left (x>0) over the top to the right (x<0); the hairline
    # is listed from right to left, which closes the polygon.
    local = np.concatenate([outer, np.array(hairline)])
    _poly(img, _to_img(hf, local), col)
    _polyline(img, _to_img(hf, outer), _shade(col, 0.6), fig.line)
    if style == "bun":
        _disc(img, _to_img(hf, np.array([0.0, HAIR_TOP - 0.1])), 0.5 * hf[3], col)
        _polyline(img, _to_img(hf, _arc(0.0, HAIR_TOP - 0.1, 0.5, 0.5, 0.3, -np.pi - 0.3, 12)), _shade(col, 0.6), fig.line)


# ------------------------------------------------------------------ head
def _draw_head(img: np.ndarray, fig: _Figure) -> None:
    hf = fig.head()
    if hf is None:
        return
    face_pts = fig.p[FACE]
    ok = fig.ok[FACE]
    sx = hf[3]
    # ears, behind the face
    for sgn in (-1.0, 1.0):
        c = _to_img(hf, np.array([sgn * 1.0, 0.32]))
        ang = np.degrees(np.arctan2(hf[1][1], hf[1][0]))
        _ellipse(img, c, (0.2 * sx + fig.line, 0.36 * hf[4] + fig.line), ang, fig.outline)
        _ellipse(img, c, (0.2 * sx, 0.36 * hf[4]), ang, fig.skin)
        _ellipse(img, c + 0.05 * sgn * sx * hf[1], (0.08 * sx, 0.2 * hf[4]), ang, fig.skin_dark)
    # face: jaw points (they follow the mouth) closed by the skull arc
    jaw = face_pts[:17] if ok[:17].all() else _to_img(hf, _default_jaw())
    outline = np.concatenate([jaw, _to_img(hf, _skull())])
    _poly(img, outline, fig.outline)
    _polyline(img, outline, fig.outline, fig.line * 2, closed=True)
    _poly(img, outline, fig.skin)
    _hair_front(img, fig, hf)
    if ok.sum() < 30:  # only a head from body points: a simple face
        for sgn in (-1.0, 1.0):
            _disc(img, _to_img(hf, np.array([sgn * EYE_CENTRE_X, 0.0])), 0.1 * sx, (40, 30, 30))
        _line(img, _to_img(hf, np.array([-0.3, 1.1])), _to_img(hf, np.array([0.3, 1.1])), _shade(fig.id.lip_color, 0.7), fig.line)
        return
    _draw_eyes(img, fig, face_pts, ok, sx)
    _draw_brows_nose(img, fig, face_pts, ok, sx)
    _draw_mouth(img, fig, face_pts, ok, sx)


@functools.lru_cache(maxsize=1)
def _default_jaw() -> np.ndarray:
    phi = np.pi * np.arange(17) / 16
    c = np.cos(phi)
    return np.stack([-np.sign(c) * np.abs(c) ** 0.8, CHIN_Y * np.sin(phi) ** 1.3], axis=1)


def _draw_eyes(img: np.ndarray, fig: _Figure, face: np.ndarray, ok: np.ndarray, sx: float) -> None:
    lid = _shade(fig.id.hair_color, 0.4) if sum(fig.id.hair_color) < 300 else (50, 35, 30)
    for eye, pupil in ((range(36, 42), 68), (range(42, 48), 69)):
        idx = list(eye)
        if not ok[idx].all():
            continue
        poly = face[idx]
        _poly(img, poly, (245, 245, 240))
        if ok[pupil]:
            centre = face[pupil]

            def paint(layer, off, centre=centre):
                _disc(layer, centre - off, 0.12 * sx, fig.id.eye_color)
                _disc(layer, centre - off, 0.055 * sx, (15, 12, 12))
                _disc(layer, centre - off + (-0.04 * sx, -0.05 * sx), 0.03 * sx, (250, 250, 250))
            _clipped(img, poly, paint)
        upper = face[idx[:4]]
        _polyline(img, upper, lid, max(1.0, 0.05 * sx))
        _polyline(img, face[[idx[3], idx[4], idx[5], idx[0]]], _shade(fig.skin, 0.8), fig.line * 0.8)


def _draw_brows_nose(img: np.ndarray, fig: _Figure, face: np.ndarray, ok: np.ndarray, sx: float) -> None:
    brow = _shade(fig.id.hair_color, 0.75) if fig.id.hair_style != "bald" else _shade(fig.skin, 0.45)
    for rng in (range(17, 22), range(22, 27)):
        idx = list(rng)
        if ok[idx].all():
            _polyline(img, face[idx], brow, max(1.0, 0.09 * sx))
    if ok[list(range(31, 36))].all():
        _polyline(img, face[31:36], fig.skin_dark, max(1.0, 0.06 * sx))
    if ok[28] and ok[30]:
        side = face[30] - face[28]
        perp = np.array([side[1], -side[0]]) / max(np.linalg.norm(side), 1e-6)
        _line(img, face[28] + 0.12 * sx * perp, face[30] + 0.16 * sx * perp, _shade(fig.skin, 0.85), fig.line)


def _draw_mouth(img: np.ndarray, fig: _Figure, face: np.ndarray, ok: np.ndarray, sx: float) -> None:
    outer = list(range(48, 60))
    inner = list(range(60, 68))
    lip = fig.id.lip_color
    if ok[outer].all():
        _poly(img, face[outer], lip)
        _polyline(img, face[outer], _shade(lip, 0.8), fig.line * 0.8, closed=True)
    if not ok[inner].all():
        return
    inner_poly = face[inner]
    gap = float(np.linalg.norm(face[66] - face[62]))
    if gap > 0.5:
        _poly(img, inner_poly, (70, 22, 30))
        top = face[60:65]
        down = face[66] - face[62]
        down = down / max(np.linalg.norm(down), 1e-6)
        teeth = np.concatenate([top, (top + min(0.4 * gap, 0.13 * sx) * down)[::-1]])

        def paint(layer, off):
            _poly(layer, teeth - off, (240, 238, 230))
            _disc(layer, (face[65] + face[66] + face[67]) / 3 - off + 0.1 * gap * down, 0.35 * gap, (170, 70, 80))
        _clipped(img, inner_poly, paint)
        _polyline(img, inner_poly, (70, 22, 30), fig.line * 0.8, closed=True)
    _polyline(img, face[60:65], _shade(lip, 0.45), fig.line)


# ------------------------------------------------------------------ body
def _hips(fig: _Figure) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(outward unit for the right side, down unit, right hip, left hip); hips extrapolated if missing."""
    rs, ls = fig.p[B["r_shoulder"]], fig.p[B["l_shoulder"]]
    out = rs - ls
    w = max(np.linalg.norm(out), 1e-6)
    out = out / w
    down = np.array([-out[1], out[0]])
    if down[1] < 0:
        down = -down
    rh = fig.p[B["r_hip"]] if fig.ok[B["r_hip"]] else rs + down * 1.6 * w - out * 0.09 * w
    lh = fig.p[B["l_hip"]] if fig.ok[B["l_hip"]] else ls + down * 1.6 * w + out * 0.09 * w
    return out, down, rh, lh


def _draw_neck(img: np.ndarray, fig: _Figure) -> None:
    hf = fig.head()
    neck = B["neck"]
    if hf is None or not fig.ok[neck]:
        return
    top = _to_img(hf, np.array([0.0, 0.8]))
    _limb(img, [fig.p[neck], top], _shade(fig.skin, 0.85), 0.95 * fig.u, fig.outline)


def _draw_torso(img: np.ndarray, fig: _Figure) -> None:
    rs_i, ls_i = B["r_shoulder"], B["l_shoulder"]
    if not fig.has(rs_i, ls_i):
        return
    u = fig.u
    rs, ls = fig.p[rs_i], fig.p[ls_i]
    out, down, rh, lh = _hips(fig)
    neck = fig.p[B["neck"]] if fig.ok[B["neck"]] else (rs + ls) / 2
    up = -down
    bottom = 0.6 * fig.size * down

    def shoulder_cap(sh, o):
        centre = sh + 0.25 * u * down
        ang = np.radians(np.linspace(-120, 35, 7))[:, None]
        return centre + 0.48 * u * (np.cos(ang) * o + np.sin(ang) * down)

    poly = np.concatenate([
        [neck + 0.45 * u * out + 0.75 * u * up],
        shoulder_cap(rs, out),
        [rs + 0.3 * u * out + 1.6 * u * down, rh + 0.25 * u * out, rh + 0.25 * u * out + bottom,
         lh - 0.25 * u * out + bottom, lh - 0.25 * u * out, ls - 0.3 * u * out + 1.6 * u * down],
        shoulder_cap(ls, -out)[::-1],
        [neck - 0.45 * u * out + 0.75 * u * up],
    ])
    shirt, shirt2 = fig.id.shirt_color, fig.id.shirt_color2
    edge = _shade(shirt, 0.55)
    _poly(img, poly, shirt)
    pattern = fig.id.shirt_pattern
    mid_bottom = (rh + lh) / 2 + bottom
    if pattern == "stripes":
        step, half_w = 0.55 * u, 0.11 * u
        n = int((np.linalg.norm(mid_bottom - neck) + 2 * u) / step)
        centres = neck + (np.arange(n)[:, None] * step - 0.5 * u) * down
        a, b = 4 * u * out, half_w * down
        quads = np.stack([centres + a - b, centres - a - b, centres - a + b, centres + a + b], axis=1)

        def paint(layer, off):
            cv2.fillPoly(layer, list(_fx(quads - off)), _c(shirt2), _AA, _SHIFT)
        _clipped(img, poly, paint)
    elif pattern == "two_tone":
        waist = (rh + lh) / 2 - 0.8 * u * down
        band = np.array([waist + 4 * u * out, waist - 4 * u * out, waist - 4 * u * out + bottom, waist + 4 * u * out + bottom])
        _clipped(img, poly, lambda layer, off: _poly(layer, band - off, shirt2))
    elif pattern == "jacket":
        inner = np.array([neck + 0.5 * u * out, neck - 0.5 * u * out, mid_bottom - 0.35 * u * out, mid_bottom + 0.35 * u * out])
        _poly(img, inner, shirt2)
        lapel = _shade(shirt, 0.7)
        v = neck + 2.4 * u * down
        _polylines(img, [np.array([neck + 0.55 * u * out, v + 0.3 * u * out, mid_bottom + 0.35 * u * out]),
                         np.array([neck - 0.55 * u * out, v - 0.3 * u * out, mid_bottom - 0.35 * u * out])], lapel, fig.line * 1.5)
    _polyline(img, poly, edge, fig.line * 1.5, closed=True)
    _draw_neckline(img, fig, neck, out, down, up)


def _draw_neckline(img: np.ndarray, fig: _Figure, neck, out, down, up) -> None:
    u = fig.u
    kind = fig.id.neckline
    skin = _shade(fig.skin, 0.85)
    a, b = neck + 0.5 * u * out + 0.2 * u * up, neck - 0.5 * u * out + 0.2 * u * up
    if kind == "v":
        tip = neck + 1.0 * u * down
        _poly(img, np.array([a, tip, b]), skin)
        _polyline(img, np.array([a, tip, b]), _shade(fig.id.shirt_color, 0.6), fig.line * 1.5)
    else:
        arc = np.array([a, neck + 0.35 * u * out + 0.25 * u * down, neck + 0.4 * u * down,
                        neck - 0.35 * u * out + 0.25 * u * down, b])
        _poly(img, arc, skin)
        _polyline(img, arc, _shade(fig.id.shirt_color, 0.6), fig.line * 1.5)
        if kind == "collar":
            collar = fig.id.shirt_color2 if fig.id.shirt_pattern != "solid" else _shade(fig.id.shirt_color, 1.25)
            for sgn in (1.0, -1.0):
                wing = np.array([neck + sgn * 0.52 * u * out + 0.25 * u * up, neck + sgn * 0.05 * u * out + 0.45 * u * down,
                                 neck + sgn * 0.75 * u * out + 0.35 * u * down])
                _poly(img, wing, collar)
                _polyline(img, wing, _shade(collar, 0.6), fig.line, closed=True)


def _draw_arm(img: np.ndarray, fig: _Figure, side: str) -> None:
    sh, el, wr = B[f"{side}_shoulder"], B[f"{side}_elbow"], B[f"{side}_wrist"]
    if not fig.has(sh, el):
        return
    u, k = fig.u, fig.id.limb_scale
    a, b = fig.p[sh], fig.p[el]
    c = fig.p[wr] if fig.ok[wr] else None
    # The upper arm starts a little inside the shoulder cap so that no sleeve end shows above it.
    d = b - a
    a = a + 0.25 * d / max(np.linalg.norm(d), 1e-6) * u
    shirt = fig.id.shirt_color
    edge = _shade(shirt, 0.55)
    upper_w, fore_w = 0.78 * u * k, 0.62 * u * k
    if fig.id.sleeves == "long":
        _limb(img, [a, b], shirt, upper_w, edge)
        if c is not None:
            _limb(img, [b, c], shirt, fore_w, edge)
    else:
        if c is not None:
            _limb(img, [b, c], fig.skin, fore_w * 0.85, fig.outline)
        _limb(img, [a, b], fig.skin, upper_w * 0.85, fig.outline)
        _limb(img, [a, a + 0.55 * (b - a)], shirt, upper_w * 1.05, edge)


def _draw_hand(img: np.ndarray, fig: _Figure, side: str) -> None:
    part = RHAND if side == "r" else LHAND
    pts = fig.p[part]
    ok = fig.ok[part]
    wr, el = B[f"{side}_wrist"], B[f"{side}_elbow"]
    if ok.sum() < 6:
        if fig.ok[wr]:  # mitten along the forearm
            w = fig.p[wr]
            d = (w - fig.p[el]) if fig.ok[el] else np.array([0.0, 1.0])
            d = d / max(np.linalg.norm(d), 1e-6)
            c = w + 0.5 * fig.u * d
            ang = np.degrees(np.arctan2(d[1], d[0]))
            _ellipse(img, c, (0.75 * fig.u + fig.line, 0.42 * fig.u + fig.line), ang, fig.outline)
            _ellipse(img, c, (0.75 * fig.u, 0.42 * fig.u), ang, fig.skin)
        return
    length = np.linalg.norm(pts[12] - pts[0]) if ok[0] and ok[12] else 1.8 * fig.u
    finger_w = max(1.5, 0.13 * length * fig.id.limb_scale)
    palm_idx = [i for i in (0, 1, 2, 5, 9, 13, 17) if ok[i]]
    if len(palm_idx) >= 3:
        palm = cv2.convexHull(_fx(pts[palm_idx])).reshape(-1, 2) / _ONE
        _polyline(img, palm, fig.outline, finger_w * 0.5 + 2 * fig.line, closed=True)
        _poly(img, palm, fig.skin)
        _polyline(img, palm, fig.skin, finger_w * 0.5, closed=True)
    # pinky first, thumb last: each finger's outline separates it from the finger drawn before
    for finger in HAND_FINGERS[::-1]:
        chain = [i for i in finger if ok[i]]
        if len(chain) >= 2:
            _limb(img, pts[chain], fig.skin, finger_w, fig.outline)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def draw_frame(points: np.ndarray, identity: Identity, size: int = 256) -> np.ndarray:
    """One RGB frame ``uint8 [size, size, 3]`` of ``identity`` posed by ``points [130, 3]``
    (a PoseSequence frame in pixels of a ``size`` x ``size`` canvas)."""
    pts = np.asarray(points, np.float32)
    if pts.shape != (N_POINTS, 3):
        raise ValueError(f"draw_frame: points must be [{N_POINTS}, 3] (one PoseSequence frame), got {pts.shape}")
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"draw_frame: size must be an integer >= 16, got {size!r}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("draw_frame: points contain NaN or infinite values; zero the missing points instead")
    img = background(identity, int(size)).copy()
    fig = _Figure(pts, identity, int(size))
    hf = fig.head()
    if hf is not None:
        _hair_back(img, fig, hf)
    _draw_neck(img, fig)
    _draw_torso(img, fig)
    _draw_head(img, fig)
    for side in ("r", "l"):
        _draw_arm(img, fig, side)
    for side in ("r", "l"):
        _draw_hand(img, fig, side)
    return img


def draw_sequence(points: np.ndarray, identity: Identity, size: int = 256) -> np.ndarray:
    """Frames ``uint8 [T, size, size, 3]`` for keypoints ``[T, 130, 3]``."""
    pts = np.asarray(points, np.float32)
    if pts.ndim != 3 or pts.shape[1:] != (N_POINTS, 3):
        raise ValueError(f"draw_sequence: points must be [T, {N_POINTS}, 3], got {pts.shape}")
    out = np.empty((pts.shape[0], size, size, 3), np.uint8)
    for t in range(pts.shape[0]):
        out[t] = draw_frame(pts[t], identity, size)
    return out

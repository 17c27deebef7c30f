package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Page size and PNG resolution: an A4-ish portrait page that stays sharp
// when zoomed.
const (
	plotWidth  = 20 * vg.Centimeter
	plotHeight = 28 * vg.Centimeter
	plotDPI    = 150
)

var (
	sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

	colorAnswered = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff} // blue
	colorSent     = color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff} // grey
	colorLatency  = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff} // red
	colorLoss     = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff} // orange
	colorMarker   = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff} // purple
	colorGrid     = color.Gray{Y: 0xdd}
)

// WritePlot draws r as one image at path, in the format its extension
// names: .svg or .png. The panels, top to bottom: answered and sent
// queries per second, the latency percentile spectrum, timeouts and loss
// per second and, for a ramp, answered QPS and p99 against the offered
// rate. A panel without data says so instead of plotting.
func WritePlot(path string, r *Report) error {
	if r == nil {
		return fmt.Errorf("writing plot %s: no report", path)
	}
	var (
		c   vg.CanvasWriterTo
		ext = strings.ToLower(filepath.Ext(path))
	)
	switch ext {
	case ".svg":
		c = vgsvg.NewWith(vgsvg.UseWH(plotWidth, plotHeight))
	case ".png":
		c = vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(plotWidth, plotHeight), vgimg.UseDPI(plotDPI))}
	default:
		return fmt.Errorf("writing plot %s: unknown format %q, want .svg or .png", path, ext)
	}
	drawReport(draw.New(c), r)

	// Rendered in full before the file is created: an error leaves no
	// half-written image behind.
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("writing plot: %w", err)
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing plot %s: %w", path, err)
	}
	return nil
}

// drawReport lays the title and the panels out on dc.
func drawReport(dc draw.Canvas, r *Report) {
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	title := textStyle(13)
	title.XAlign, title.YAlign = draw.XCenter, draw.YTop
	head := plotTitle(r)
	margin := vg.Centimeter / 2
	dc.FillText(title, vg.Point{X: dc.Center().X, Y: dc.Max.Y - margin}, head)

	panels := []*plot.Plot{qpsPanel(r), spectrumPanel(r), lossPanel(r)}
	if len(r.Steps) > 0 {
		panels = append(panels, rampPanel(r))
	}
	rows := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{
		Rows: len(rows), Cols: 1,
		PadTop:    margin + title.Height(head) + vg.Centimeter/2,
		PadBottom: margin, PadLeft: margin, PadRight: margin,
		PadY: vg.Centimeter,
	}
	canvases := plot.Align(rows, tiles, dc)
	for i, p := range panels {
		p.Draw(canvases[i][0])
	}
}

// plotTitle is three lines: what was measured, how, and the headline.
func plotTitle(r *Report) string {
	s := r.Settings
	var load string
	switch {
	case s.Rate > 0:
		load = fmt.Sprintf("open loop at %s q/s", siFormat(s.Rate))
	default:
		load = fmt.Sprintf("closed loop, %d outstanding", s.Outstanding)
	}
	clients := "clients"
	if s.Clients == 1 {
		clients = "client"
	}
	how := fmt.Sprintf("%d %s, %s, %.1f s", s.Clients, clients, load, r.Seconds)
	if s.Queries != "" {
		how += ", queries: " + s.Queries
	}
	what := r.Target + " over " + r.Transport
	if !r.Started.IsZero() {
		what += ", " + r.Started.UTC().Format("2006-01-02 15:04 UTC")
	}
	headline := fmt.Sprintf("no answers: %d sent, %d timeouts, %d errors", r.Sent, r.Timeouts, r.Errors)
	if r.Answered > 0 {
		headline = fmt.Sprintf("%s answered/s   p50 %s ms   p99 %s ms   loss %.2f%%",
			siFormat(r.QPS), msFormat(r.Latency.P50), msFormat(r.Latency.P99), 100*lossShare(r.Sent, r.Timeouts))
	}
	return what + "\n" + how + "\n" + headline
}

// lossShare is timeouts/sent, 0 when nothing was sent.
func lossShare(sent, timeouts uint64) float64 {
	if sent == 0 {
		return 0
	}
	return float64(timeouts) / float64(sent)
}

func qpsPanel(r *Report) *plot.Plot {
	p := newPanel("Queries per second", "seconds since start", "queries/s")
	if len(r.Timeline) == 0 {
		return emptyPanel(p, "no timeline: the run recorded no whole second")
	}
	sent := make(plotter.XYs, len(r.Timeline))
	answered := make(plotter.XYs, len(r.Timeline))
	for i, s := range r.Timeline {
		sent[i] = plotter.XY{X: float64(s.T), Y: float64(s.Sent)}
		answered[i] = plotter.XY{X: float64(s.T), Y: float64(s.Answered)}
	}
	ls := addLine(p, sent, colorSent, "sent")
	ls.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	addLine(p, answered, colorAnswered, "answered")
	timeAxis(p)
	p.Y.Min = 0
	p.Y.Max *= 1.1 // headroom for the legend
	p.Legend.Top = false
	return p
}

func spectrumPanel(r *Report) *plot.Plot {
	p := newPanel("Latency by percentile", "percentile", "latency (ms)")
	var pts plotter.XYs
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, q := range r.Spectrum {
		// 100% (the max) would sit at infinity on this axis.
		if q.Percentile < 0 || q.Percentile >= 100 || !(q.Ms > 0) || math.IsInf(q.Ms, 0) {
			continue
		}
		pts = append(pts, plotter.XY{X: 1 / (1 - q.Percentile/100), Y: q.Ms})
		lo, hi = math.Min(lo, q.Ms), math.Max(hi, q.Ms)
	}
	if len(pts) == 0 {
		if r.Answered == 0 {
			return emptyPanel(p, "no latency spectrum: the run had no answers")
		}
		return emptyPanel(p, "no latency spectrum in the report")
	}
	addLine(p, pts, colorLatency, "")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = percentileTicks{}
	p.X.Min = 1
	p.X.Max = math.Max(p.X.Max, 100) // at least up to 99%
	if hi/lo > 100 {
		p.Y.Scale = plot.LogScale{}
		p.Y.Tick.Marker = logTicks{}
	} else {
		p.Y.Min = 0
		p.Y.Tick.Marker = siTicks{}
	}
	return p
}

func lossPanel(r *Report) *plot.Plot {
	p := newPanel("Timeouts per second", "seconds since start", "timeouts/s")
	if len(r.Timeline) == 0 {
		return emptyPanel(p, "no timeline: the run recorded no whole second")
	}
	timeouts := make(plotter.XYs, len(r.Timeline))
	loss := make([]plotter.XY, len(r.Timeline))
	var maxLoss float64
	for i, s := range r.Timeline {
		timeouts[i] = plotter.XY{X: float64(s.T), Y: float64(s.Timeouts)}
		l := 100 * lossShare(s.Sent, s.Timeouts)
		loss[i] = plotter.XY{X: float64(s.T), Y: l}
		maxLoss = math.Max(maxLoss, l)
	}
	addLine(p, timeouts, colorLoss, "timeouts/s")
	timeAxis(p)
	p.Y.Min = 0
	p.Y.Max = math.Max(p.Y.Max*1.1, 1)
	if maxLoss == 0 {
		p.Title.Text += " (none)"
	}
	addSecondary(p, loss, math.Max(maxLoss*1.1, 0.1), "loss %", color.Black, "loss % of sent")
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(6)
	return p
}

func rampPanel(r *Report) *plot.Plot {
	p := newPanel("Ramp: answered and p99 by offered rate", "offered queries/s", "answered/s")
	p.X.Tick.Marker = siTicks{}
	answered := make(plotter.XYs, len(r.Steps))
	p99 := make([]plotter.XY, len(r.Steps))
	var maxP99, maxRate float64
	exceeded := -1
	for i, s := range r.Steps {
		answered[i] = plotter.XY{X: s.Rate, Y: s.QPS}
		p99[i] = plotter.XY{X: s.Rate, Y: s.Latency.P99}
		maxP99 = math.Max(maxP99, s.Latency.P99)
		maxRate = math.Max(maxRate, s.Rate)
		if s.Exceeded && exceeded < 0 {
			exceeded = i
		}
	}
	// Offered = answered is the line a healthy server follows.
	ideal := addLine(p, plotter.XYs{{X: 0, Y: 0}, {X: maxRate, Y: maxRate}}, colorSent, "offered")
	ideal.Dashes = []vg.Length{vg.Points(2), vg.Points(3)}
	ideal.Width = vg.Points(1)
	addLine(p, answered, colorAnswered, "answered")
	p.X.Min, p.Y.Min = 0, 0
	p.Y.Max = math.Max(p.Y.Max*1.1, 1)
	addSecondary(p, p99, math.Max(maxP99*1.1, 0.001), "p99 ms", colorLatency, "p99")
	if exceeded >= 0 && !math.IsNaN(r.Steps[exceeded].Rate) {
		s := r.Steps[exceeded]
		p.Add(&marker{x: s.Rate, label: "limit exceeded at " + siFormat(s.Rate) + " q/s"})
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs = vg.Points(6)
	return p
}

// timeAxis starts the time axis at 0 and gives one second at least.
func timeAxis(p *plot.Plot) {
	p.X.Min = 0
	p.X.Max = math.Max(p.X.Max, 1)
}

// newPanel is a plot with sans fonts of a readable size, grid lines and
// SI tick labels.
func newPanel(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(sans, 12)
	p.Title.Padding = vg.Points(6)
	p.X.Label.Text, p.Y.Label.Text = x, y
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(sans, 11)
		a.Tick.Label.Font = font.From(sans, 10)
		a.Tick.Marker = siTicks{}
	}
	p.Legend.TextStyle.Font = font.From(sans, 10)
	p.Legend.Top = true
	p.Legend.XOffs = -vg.Points(6)
	p.Legend.YOffs = -vg.Points(4)
	g := plotter.NewGrid()
	g.Vertical.Color, g.Horizontal.Color = colorGrid, colorGrid
	g.Vertical.Width, g.Horizontal.Width = vg.Points(0.5), vg.Points(0.5)
	p.Add(g)
	return p
}

// emptyPanel replaces the data of p with a note.
func emptyPanel(p *plot.Plot, msg string) *plot.Plot {
	p.X.Min, p.X.Max, p.Y.Min, p.Y.Max = 0, 1, 0, 1
	p.HideAxes()
	p.X.Label.Text, p.Y.Label.Text = "", ""
	p.Add(&note{text: msg})
	return p
}

// addLine adds a named line of pts to p and returns its style for tuning.
// A single point, which makes no line, is drawn as a dot.
func addLine(p *plot.Plot, pts plotter.XYs, c color.Color, name string) *draw.LineStyle {
	l := &plotter.Line{XYs: finite(pts)}
	l.LineStyle = draw.LineStyle{Color: c, Width: vg.Points(1.5)}
	p.Add(l)
	if len(l.XYs) == 1 {
		p.Add(&plotter.Scatter{XYs: l.XYs, GlyphStyle: draw.GlyphStyle{
			Color: c, Radius: vg.Points(3), Shape: draw.CircleGlyph{},
		}})
	}
	if name != "" {
		p.Legend.Add(name, l)
	}
	return &l.LineStyle
}

// finite drops points plotter would reject.
func finite(pts plotter.XYs) plotter.XYs {
	out := pts[:0:0]
	for _, pt := range pts {
		if !math.IsNaN(pt.X) && !math.IsNaN(pt.Y) && !math.IsInf(pt.X, 0) && !math.IsInf(pt.Y, 0) {
			out = append(out, pt)
		}
	}
	return out
}

// addSecondary plots pts, in a unit of their own from 0 to max, against
// an axis on the right of p. p's own Y range must be final.
func addSecondary(p *plot.Plot, pts []plotter.XY, max float64, label string, c color.Color, name string) {
	scale := (p.Y.Max - p.Y.Min) / max
	scaled := make(plotter.XYs, len(pts))
	for i, pt := range pts {
		scaled[i] = plotter.XY{X: pt.X, Y: p.Y.Min + pt.Y*scale}
	}
	ls := addLine(p, scaled, c, name)
	ls.Width = vg.Points(1)
	ls.Dashes = []vg.Length{vg.Points(4), vg.Points(2)}
	p.Add(&rightAxis{
		min: p.Y.Min, scale: scale, max: max, label: label,
		tickLabel: p.Y.Tick.Label, tickLine: p.Y.Tick.LineStyle, tickLen: p.Y.Tick.Length,
		axis: p.Y.Label.TextStyle,
	})
}

// textStyle is plain sans text of size pt.
func textStyle(pt vg.Length) text.Style {
	return text.Style{Color: color.Black, Font: font.From(sans, pt), Handler: plot.DefaultTextHandler}
}

// note is a centred message in an empty panel.
type note struct{ text string }

func (n *note) Plot(c draw.Canvas, _ *plot.Plot) {
	sty := textStyle(12)
	sty.Color = color.Gray{Y: 0x60}
	sty.XAlign, sty.YAlign = draw.XCenter, draw.YCenter
	c.FillText(sty, c.Center(), n.text)
}

// marker is a labelled vertical line at x.
type marker struct {
	x     float64
	label string
}

func (m *marker) Plot(c draw.Canvas, p *plot.Plot) {
	x := c.X(p.X.Norm(m.x))
	c.StrokeLine2(draw.LineStyle{Color: colorMarker, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(3), vg.Points(3)}},
		x, c.Min.Y, x, c.Max.Y)
	sty := textStyle(10)
	sty.Color = colorMarker
	sty.XAlign, sty.YAlign = draw.XRight, draw.YTop
	c.FillText(sty, vg.Point{X: x - vg.Points(3), Y: c.Max.Y - vg.Points(3)}, m.label)
}

// rightAxis draws the scale of a secondary series on the right edge.
type rightAxis struct {
	min, scale, max float64
	label           string
	tickLabel, axis text.Style
	tickLine        draw.LineStyle
	tickLen         vg.Length
}

func (a *rightAxis) ticks() []plot.Tick {
	var out []plot.Tick
	for _, t := range (siTicks{}).Ticks(0, a.max) {
		if t.Label != "" && t.Value <= a.max {
			out = append(out, t)
		}
	}
	return out
}

func (a *rightAxis) labelStyles() (tick, axis text.Style) {
	tick = a.tickLabel
	tick.XAlign, tick.YAlign = draw.XLeft, draw.YCenter
	axis = a.axis
	axis.Rotation = -math.Pi / 2
	axis.XAlign, axis.YAlign = draw.XCenter, draw.YBottom
	return tick, axis
}

func (a *rightAxis) Plot(c draw.Canvas, p *plot.Plot) {
	tick, axis := a.labelStyles()
	x := c.Max.X
	c.StrokeLine2(a.tickLine, x, c.Min.Y, x, c.Max.Y)
	var widest vg.Length
	for _, t := range a.ticks() {
		y := c.Y(p.Y.Norm(a.min + t.Value*a.scale))
		c.StrokeLine2(a.tickLine, x, y, x+a.tickLen/2, y)
		c.FillText(tick, vg.Point{X: x + a.tickLen/2 + vg.Points(2), Y: y}, t.Label)
		widest = max(widest, tick.Width(t.Label))
	}
	c.FillText(axis, vg.Point{X: x + a.tickLen/2 + vg.Points(6) + widest, Y: c.Center().Y}, a.label)
}

// GlyphBoxes reserves room on the right for the labels.
func (a *rightAxis) GlyphBoxes(p *plot.Plot) []plot.GlyphBox {
	tick, axis := a.labelStyles()
	var (
		boxes  []plot.GlyphBox
		widest vg.Length
	)
	for _, t := range a.ticks() {
		widest = max(widest, tick.Width(t.Label))
		r := tick.Rectangle(t.Label)
		r = r.Add(vg.Point{X: a.tickLen/2 + vg.Points(2)})
		boxes = append(boxes, plot.GlyphBox{X: 1, Y: p.Y.Norm(a.min + t.Value*a.scale), Rectangle: r})
	}
	r := axis.Rectangle(a.label)
	r = r.Add(vg.Point{X: a.tickLen/2 + vg.Points(6) + widest})
	boxes = append(boxes, plot.GlyphBox{X: 1, Y: 0.5, Rectangle: r})
	return boxes
}

// percentileTicks labels the 1/(1−p) axis of a latency spectrum with the
// percentiles 50%, 90%, 99%, 99.9%, … and puts minor ticks between. Past
// seven nines only some are labelled, so that the labels do not overlap.
type percentileTicks struct{}

func (percentileTicks) Ticks(lo, hi float64) []plot.Tick {
	ticks := []plot.Tick{{Value: 1}, {Value: 2, Label: "50%"}}
	every := max(1, int(math.Ceil(math.Log10(hi)/7)))
	for v, nines := 10.0, 1; v <= hi*1.0001; v, nines = v*10, nines+1 {
		if nines%every != 0 {
			ticks = append(ticks, plot.Tick{Value: v})
			continue
		}
		label := "90%"
		switch {
		case nines == 2:
			label = "99%"
		case nines > 2:
			label = "99." + strings.Repeat("9", nines-2) + "%"
		}
		ticks = append(ticks, plot.Tick{Value: v / 2}, plot.Tick{Value: v, Label: label})
	}
	var out []plot.Tick
	for _, t := range ticks {
		if t.Value >= lo && t.Value <= hi*1.0001 {
			out = append(out, t)
		}
	}
	return out
}

// logTicks labels 1, 2 and 5 times each power of ten, or only the powers
// of ten when the range spans more than three decades, and only some of
// them beyond ten decades.
type logTicks struct{}

func (logTicks) Ticks(min, max float64) []plot.Tick {
	if !(min > 0) || !(max > min) || math.IsInf(max, 0) {
		return nil
	}
	decades := math.Log10(max / min)
	dense := decades <= 3
	every := math.Max(1, math.Ceil(decades/10))
	var out []plot.Tick
	for e := math.Floor(math.Log10(min)); math.Pow(10, e) <= max; e += every {
		base := math.Pow(10, e)
		for i := 1; i < 10; i++ {
			v := base * float64(i)
			if v < min || v > max || i > 1 && every > 1 {
				continue
			}
			t := plot.Tick{Value: v}
			if i == 1 || dense && (i == 2 || i == 5) {
				t.Label = msFormat(v)
			}
			out = append(out, t)
		}
	}
	return out
}

// siTicks labels about six round values (1, 2 or 5 times a power of ten)
// as 20k or 1.5M rather than 20000, with a minor tick between each two.
type siTicks struct{}

func (siTicks) Ticks(min, max float64) []plot.Tick {
	if !(max > min) || math.IsInf(max-min, 0) {
		return []plot.Tick{{Value: min, Label: siFormat(min)}}
	}
	raw := (max - min) / 6
	step := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*step >= raw {
			step *= m
			break
		}
	}
	if !(step > 0) || math.IsInf(step, 0) {
		return []plot.Tick{{Value: min, Label: siFormat(min)}}
	}
	var ts []plot.Tick
	// At most 14 ticks; the bound also ends the loop where step is below
	// the float resolution of min.
	for i := math.Ceil(min / step * 2); i/2*step <= max+step*1e-9 && len(ts) < 14; i++ {
		v := i / 2 * step
		t := plot.Tick{Value: v}
		if math.Mod(i, 2) == 0 {
			t.Label = siFormat(v)
		}
		ts = append(ts, t)
	}
	return ts
}

// siFormat writes v as 950, 12.5k or 1.2M.
func siFormat(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return strconv.FormatFloat(v/1e6, 'g', 4, 64) + "M"
	case a >= 1e3:
		return strconv.FormatFloat(v/1e3, 'g', 4, 64) + "k"
	case a >= 1 || a == 0:
		return strconv.FormatFloat(v, 'g', 4, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// msFormat writes a latency with three significant digits and no
// exponent above 1000: 0.42, 2.3, 15.2, 1234.
func msFormat(ms float64) string {
	if math.Abs(ms) >= 1000 {
		return strconv.FormatFloat(ms, 'f', 0, 64)
	}
	return strconv.FormatFloat(ms, 'g', 3, 64)
}

package quota

import (
	"time"

	"github.com/chattermail/chattermail/platform/config"
)

// Window is one quota window of a tenant: a calendar day in the tenant's
// time zone, from local midnight to the next local midnight
// (mail-rules §8). It lasts 24 hours, or 23 or 25 on a day when the
// zone's clocks change.
type Window struct {
	// Name is the local date, "2006-01-02"; it names the window's Redis
	// keys and appears in QuotaGrant.window and QuotaEvent.window.
	Name string
	// Start is the window's first instant, inclusive.
	Start time.Time
	// End is the next window's Start, exclusive; held mail is released then.
	End time.Time
}

// Contains reports whether t falls inside the window.
func (w Window) Contains(t time.Time) bool {
	return !t.Before(w.Start) && t.Before(w.End)
}

// WindowOf returns the window of tenant t that contains now: the day of
// now in t.Location() (UTC when the tenant sets no time zone).
func WindowOf(t *config.Tenant, now time.Time) Window {
	loc := t.Location()
	y, m, d := now.In(loc).Date()
	return Window{
		Name:  time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Format(time.DateOnly),
		Start: dayStart(y, m, d, loc),
		End:   dayStart(y, m, d+1, loc),
	}
}

// dayStart returns the first instant of the local day y-m-d in loc. That
// is local midnight, with two exceptions that time.Date leaves open ("the
// choice of time zone is not guaranteed"):
//
//   - clocks jump forward at midnight (America/Havana in March,
//     America/Santiago in September): midnight does not exist and the day
//     starts at the jump, whichever side of it time.Date picked;
//   - clocks fall back to midnight (Asia/Amman until 2022): midnight
//     occurs twice and the day starts at the first.
func dayStart(y int, m time.Month, d int, loc *time.Location) time.Time {
	want := time.Date(y, m, d, 0, 0, 0, 0, time.UTC) // also normalises d past the month's end
	t := time.Date(want.Year(), want.Month(), want.Day(), 0, 0, 0, 0, loc)
	start, end := t.ZoneBounds()
	switch wall := wallClock(t); {
	case wall.Before(want):
		// Resolved before the jump, late on the previous local day: the
		// day starts where that zone period ends.
		if !end.IsZero() {
			return end
		}
	case wall.After(want):
		// Resolved after the jump (01:00 instead of 00:00, or a later
		// day when a whole day was skipped): the day starts where the
		// current zone period begins.
		if !start.IsZero() {
			return start
		}
	case !start.IsZero():
		// Midnight exists; if the previous zone period also showed it,
		// that earlier instant is the day's start.
		_, cur := t.Zone()
		_, prev := start.Add(-time.Nanosecond).Zone()
		if e := t.Add(time.Duration(cur-prev) * time.Second); e.Before(start) && wallClock(e).Equal(want) {
			return e
		}
	}
	return t
}

// wallClock returns the local date and clock of t as a UTC time, so that
// wall times can be compared.
func wallClock(t time.Time) time.Time {
	y, m, d := t.Date()
	hh, mm, ss := t.Clock()
	return time.Date(y, m, d, hh, mm, ss, t.Nanosecond(), time.UTC)
}

// windowAfter returns the window n windows after w (n ≥ 0) of tenant t.
func windowAfter(t *config.Tenant, w Window, n int) Window {
	loc := t.Location()
	y, m, d := w.Start.In(loc).Date()
	return WindowOf(t, dayStart(y, m, d+n, loc))
}

// windowNamed returns tenant t's window named name ("2006-01-02").
func windowNamed(t *config.Tenant, name string) (Window, error) {
	day, err := time.Parse(time.DateOnly, name)
	if err != nil {
		return Window{}, err
	}
	return WindowOf(t, dayStart(day.Year(), day.Month(), day.Day(), t.Location())), nil
}

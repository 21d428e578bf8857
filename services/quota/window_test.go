package quota

import (
	"fmt"
	"testing"
	"time"
	_ "time/tzdata" // the tests must not depend on the machine's zoneinfo

	"github.com/chattermail/chattermail/platform/config"
)

// tenantIn returns a tenant whose window lives in zone ("" for the default).
func tenantIn(t testing.TB, zone string) *config.Tenant {
	t.Helper()
	doc := "tenants:\n  acme:\n    alias_domain: example.com\n"
	if zone != "" {
		doc += "    time_zone: " + zone + "\n"
	}
	c, err := config.Parse([]byte(doc), "")
	if err != nil {
		t.Fatal(err)
	}
	return c.Tenant("acme")
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestWindowOf(t *testing.T) {
	tests := []struct {
		zone  string
		now   string
		name  string
		start string
		end   string
	}{
		{"", "2026-11-24T13:45:00Z", "2026-11-24", "2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z"},
		{"UTC", "2026-11-24T00:00:00Z", "2026-11-24", "2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z"},
		{"UTC", "2026-11-24T23:59:59.999999999Z", "2026-11-24", "2026-11-24T00:00:00Z", "2026-11-25T00:00:00Z"},
		{"UTC", "2026-12-31T12:00:00Z", "2026-12-31", "2026-12-31T00:00:00Z", "2027-01-01T00:00:00Z"},
		{"UTC", "2028-02-28T12:00:00Z", "2028-02-28", "2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z"},
		// Paris in winter is UTC+1: 23:30Z is already tomorrow there.
		{"Europe/Paris", "2026-11-24T22:59:59Z", "2026-11-24", "2026-11-23T23:00:00Z", "2026-11-24T23:00:00Z"},
		{"Europe/Paris", "2026-11-24T23:30:00Z", "2026-11-25", "2026-11-24T23:00:00Z", "2026-11-25T23:00:00Z"},
		// Summer, UTC+2.
		{"Europe/Paris", "2026-07-14T12:00:00Z", "2026-07-14", "2026-07-13T22:00:00Z", "2026-07-14T22:00:00Z"},
		// 29 March 2026: 02:00 CET becomes 03:00 CEST; the day lasts 23 hours.
		{"Europe/Paris", "2026-03-29T00:30:00Z", "2026-03-29", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"},
		{"Europe/Paris", "2026-03-29T21:59:59Z", "2026-03-29", "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"},
		// 25 October 2026: 03:00 CEST becomes 02:00 CET; the day lasts 25 hours.
		{"Europe/Paris", "2026-10-25T00:30:00Z", "2026-10-25", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"},
		{"Europe/Paris", "2026-10-25T22:59:59Z", "2026-10-25", "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"},
		// Clocks jumped from 00:00 to 01:00 on 11 September 2022: the day
		// started at 01:00 -03 (04:00Z), not at a midnight that never was.
		{"America/Santiago", "2022-09-11T12:00:00Z", "2022-09-11", "2022-09-11T04:00:00Z", "2022-09-12T03:00:00Z"},
		{"America/Santiago", "2022-09-11T03:59:59Z", "2022-09-10", "2022-09-10T04:00:00Z", "2022-09-11T04:00:00Z"},
		// Havana falls back from 01:00 to 00:00 on 6 November 2022: the day
		// started at the first of its two midnights (04:00Z).
		{"America/Havana", "2022-11-06T04:30:00Z", "2022-11-06", "2022-11-06T04:00:00Z", "2022-11-07T05:00:00Z"},
		{"America/Havana", "2022-11-06T05:30:00Z", "2022-11-06", "2022-11-06T04:00:00Z", "2022-11-07T05:00:00Z"},
		// Amman fell back from 01:00 to 00:00 on 29 October 2021, and
		// time.Date resolves that midnight to the second one.
		{"Asia/Amman", "2021-10-28T21:30:00Z", "2021-10-29", "2021-10-28T21:00:00Z", "2021-10-29T22:00:00Z"},
		{"Asia/Amman", "2021-10-28T20:59:59Z", "2021-10-28", "2021-10-27T21:00:00Z", "2021-10-28T21:00:00Z"},
	}
	for _, tt := range tests {
		ten := tenantIn(t, tt.zone)
		got := WindowOf(ten, utc(tt.now))
		want := Window{Name: tt.name, Start: utc(tt.start), End: utc(tt.end)}
		if got.Name != want.Name || !got.Start.Equal(want.Start) || !got.End.Equal(want.End) {
			t.Errorf("WindowOf(%q, %s) = %s [%s, %s), want %s [%s, %s)", tt.zone, tt.now,
				got.Name, got.Start.UTC().Format(time.RFC3339), got.End.UTC().Format(time.RFC3339),
				want.Name, tt.start, tt.end)
		}
	}
}

// TestWindowOfTilesTime walks two years hour by hour (and each transition
// to the nanosecond) in zones with unusual days and checks that windows
// contain their instant, are named after its local date, start at that
// date's first instant and follow each other without gap or overlap.
func TestWindowOfTilesTime(t *testing.T) {
	zones := []string{
		"UTC", "Europe/Paris", "America/New_York", "America/Santiago", "America/Havana", "Asia/Amman",
		"Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham",
		"Pacific/Apia", // skipped 30 December 2011 altogether
	}
	for _, zone := range zones {
		t.Run(zone, func(t *testing.T) {
			ten := tenantIn(t, zone)
			loc := ten.Location()
			from := utc("2011-01-01T00:00:00Z")
			if zone != "Pacific/Apia" {
				from = utc("2021-06-01T00:00:00Z")
			}
			for now := from; now.Before(from.AddDate(2, 0, 0)); now = now.Add(time.Hour) {
				for _, at := range []time.Time{now, now.Add(-time.Nanosecond)} {
					if err := checkWindow(ten, loc, at); err != nil {
						t.Fatal(err)
					}
				}
			}
		})
	}
}

func checkWindow(ten *config.Tenant, loc *time.Location, now time.Time) error {
	w := WindowOf(ten, now)
	if !w.Contains(now) {
		return fmt.Errorf("WindowOf(%s) = [%s, %s), which does not contain it", now, w.Start, w.End)
	}
	if name := now.In(loc).Format(time.DateOnly); w.Name != name {
		return fmt.Errorf("WindowOf(%s).Name = %s, want the local date %s", now, w.Name, name)
	}
	if name := w.Start.In(loc).Format(time.DateOnly); name != w.Name {
		return fmt.Errorf("WindowOf(%s).Start = %s, on local date %s, want %s", now, w.Start, name, w.Name)
	}
	if prev := w.Start.Add(-time.Nanosecond).In(loc).Format(time.DateOnly); prev >= w.Name {
		return fmt.Errorf("WindowOf(%s).Start = %s, but the instant before is on %s already", now, w.Start, prev)
	}
	if next := WindowOf(ten, w.End); !next.Start.Equal(w.End) || next.Name <= w.Name {
		return fmt.Errorf("window after %s (%s) starts at %s, want %s", w.Name, now, next.Start, w.End)
	}
	if l := w.End.Sub(w.Start); l < 22*time.Hour || l > 26*time.Hour {
		return fmt.Errorf("WindowOf(%s) lasts %s", now, l)
	}
	return nil
}

// Package quota is the stage that enforces each tenant's daily sending
// limit (mail-rules §8) and paces mail per recipient domain. It consumes
// mail.rewritten.<tenant>, counts every mail against its tenant's current
// window in Redis and publishes it on mail.ready.<tenant> with its
// QuotaGrant, so the sender only ever sees mail that has its place in a
// window. Mail that does not fit waits, durably, and a scheduler releases
// it by itself, in order, when there is room again.
//
// # Counting
//
// A Ledger keeps, per tenant and window, the count of granted mails and
// the set of their ids, changed only by Lua scripts that are atomic and
// idempotent by mail id: a redelivered or retried mail is never counted
// twice, not even when the retry comes after midnight. One unit is one
// recipient copy. The limit is the tenants file's daily_limit unless the
// Redis key OverrideKey(tenant) holds a runtime value (SetLimit, the admin
// endpoint, "chattermail quota set"). The grants that reach 80 % and 100 %
// of the limit are marked in Redis, so a QuotaEvent is published on
// events.quota.<tenant> once per window for each. Every key of a tenant
// has the hash tag {<tenant>}, so the scripts run on Redis Cluster.
//
// # Windows
//
// A window is a calendar day in the tenant's time zone, 00:00 to 00:00
// local (UTC by default); see WindowOf. The injected clock (Options.Now)
// drives admission and the scheduler alike.
//
// # The waiting place
//
// Over-limit mail is held, never dropped, and leaves the JetStream
// consumer at once: the stage stores it and acknowledges its input, so
// held mail costs no CPU and no place in the consumer's ack-pending set,
// however much of it waits. Storage is split in two:
//
//   - the payload goes to the HELD stream, on mail.held.<tenant>
//     (file-backed, replicated like every stream; nobody consumes it: the
//     scheduler reads a message by sequence and deletes it once the mail
//     is on mail.ready);
//   - the order goes to Redis, in the tenant's held line, a sorted set of
//     mail ids scored by arrival number, with a hash from mail id to HELD
//     sequence (StoredKey).
//
// Redis thus holds about 250 bytes per waiting mail whatever its size (a
// million waiting mails take some 250 MB; BenchmarkRelease100k measures
// it), and the mail bodies live on the streams' disks. Admit puts the mail in the
// line in the same script that finds the window full, so the decision
// and the place in line are one step; the stage then stores the payload
// (Nats-Msg-Id <mail id>:quota-held) and records its sequence (Locate),
// publishes the held MailEvent with its planned release time and only
// then acknowledges. A crash between two steps makes the input come back,
// and each step is idempotent. While older mail waits, new mail queues
// behind it even if the window has room, so the line leaves in order.
//
// A mail granted but over a pacing rule waits the same way in the paced
// line, scored by its due time; a mail being published sits in the
// releasing line with a lease (see below).
//
// # The scheduler
//
// Run also runs a scheduler in every replica. It keeps, in memory, when
// each tenant next needs a pass: when its window ends, when its first
// paced mail is due, when a release lease ends, after the release gate
// when the window has room, and at the latest after Options.Sweep. A tick
// (Options.Tick, real time) compares those times with the injected clock;
// nothing is read from Redis for a tenant that is not due. A pass also
// comes at once when the tenant's limit changes (LimitChannel, pub/sub,
// and the admin endpoint directly) or when a mail is stored while there
// is room. No mail is ever polled on its own.
//
// A pass is one script, release.lua, which takes at most
// Options.ReleaseBatch mails: those of the releasing line whose lease has
// ended, the due paced mails, then held mails in arrival order, each
// granted through the same accounting as Admit, as far as the window has
// room. A batch of held mail closes the tenant's release gate for
// Options.ReleaseInterval, so a window that opens on a long line releases
// it at a steady pace (50 mails a second per tenant by default), not as a
// thundering herd, and never beyond the window's limit. The mails taken
// move to the releasing line with a lease; the pass reads each payload
// from HELD, publishes it on mail.ready.<tenant> (Nats-Msg-Id
// <mail id>:quota, as a direct grant), publishes the released MailEvent,
// forgets the mail (Done) and then deletes its HELD copy: a mail keeps its
// copy as long as it is in a line. A crash between publishing and
// forgetting leaves the mail in the releasing line until its lease ends;
// the next pass publishes it again and the stream drops the duplicate
// (the sender's delivered set catches one outside the duplicate window).
// A copy left behind by a crash after forgetting, or stored twice by a
// retry after the duplicate window, is an orphan: while a tenant's lines
// are empty the scheduler purges its HELD subject (at most hourly). Scripts
// make every step safe when several replicas pass over one tenant at once:
// a mail is taken by one pass only, and the gate and the window's count
// are shared.
//
// # Pacing
//
// On top of the daily limit, pacing rules (config.Pacing: per tenant, or
// at the top of the tenants file for all tenants together) bound the mails
// per minute to one recipient domain. A Pacer reserves each mail's slot in
// a GCRA held in Redis (pace.lua); a mail whose slot is later goes to the
// paced line with that due time, acknowledged, and is published when it
// is due. It is delayed, never failed, and no delivery attempt is spent
// on it: the sender counts attempts and sees the mail only when its slot
// has come.
//
// # Failures
//
// Quota fails closed: when Redis cannot answer or answers too slowly
// (Options.RedisTimeout), no mail is published to mail.ready; the input
// is redelivered with the consumer's backoff until Redis is back, passes
// are retried with a backoff of their own, and Ready reports the outage.
// Redis must persist what it holds (appendonly yes; appendfsync always
// for no loss at all when Redis itself crashes): counts and lines live
// there only. The stage recovers by itself when Redis comes back.
package quota

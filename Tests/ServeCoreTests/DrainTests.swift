import Testing

@testable import ServeCore

/// A worker's graceful shutdown on a fake clock.
@Suite("Node drain")
struct DrainTests {
    @Test("a draining node exits once its replicas are gone, not before")
    func exitsWhenEmpty() {
        var drain = NodeDrain()
        #expect(drain.begin(now: 0, timeout: 30, replicas: 3, connected: true).isEmpty)
        #expect(drain.isDraining)
        #expect(drain.update(replicas: 2, connected: true, now: 1).isEmpty)
        #expect(drain.update(replicas: 1, connected: true, now: 2).isEmpty)
        #expect(
            drain.update(replicas: 0, connected: true, now: 3) == [
                .exit(reason: "drained: no replica left on this node")
            ]
        )
        #expect(drain.isDone)
        #expect(drain.update(replicas: 0, connected: true, now: 4).isEmpty, "exit is said once")
    }

    @Test("an empty node exits at once")
    func empty() {
        var drain = NodeDrain()
        #expect(
            drain.begin(now: 0, timeout: 30, replicas: 0, connected: true) == [
                .exit(reason: "drained: no replica left on this node")
            ]
        )
    }

    @Test("the drain timeout bounds the wait")
    func deadline() {
        var drain = NodeDrain()
        #expect(drain.begin(now: 10, timeout: 5, replicas: 2, connected: true).isEmpty)
        #expect(drain.update(replicas: 2, connected: true, now: 14.9).isEmpty)
        let directives = drain.update(replicas: 2, connected: true, now: 15)
        #expect(directives == [.exit(reason: "the drain timeout passed with 2 replica(s) still here; stopping them")])
    }

    @Test("without the head nothing can replace the replicas: exit at once")
    func headGone() {
        var drain = NodeDrain()
        #expect(drain.begin(now: 0, timeout: 30, replicas: 2, connected: false).count == 1)
        var later = NodeDrain()
        #expect(later.begin(now: 0, timeout: 30, replicas: 2, connected: true).isEmpty)
        #expect(later.update(replicas: 2, connected: false, now: 1).count == 1)
    }

    @Test("a second begin changes nothing")
    func idempotent() {
        var drain = NodeDrain()
        #expect(drain.begin(now: 0, timeout: 30, replicas: 1, connected: true).isEmpty)
        #expect(drain.begin(now: 100, timeout: 1, replicas: 1, connected: true).isEmpty)
        #expect(drain.update(replicas: 1, connected: true, now: 29).isEmpty, "the first deadline holds")
    }
}

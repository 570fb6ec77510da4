import Testing

@testable import ServeCore

/// The replica health monitor and the start backoff on a fake clock.
@Suite("Replica health checks")
struct HealthCheckTests {
    let config = HealthMonitor.Configuration(period: 10, timeout: 30)

    @Test("checks run every period; a pass resets the count of failures")
    func periodic() {
        var monitor = HealthMonitor(configuration: self.config, now: 0)
        #expect(monitor.nextWake == 10)
        #expect(monitor.tick(now: 9.9).isEmpty)
        #expect(monitor.tick(now: 10) == [.runCheck(number: 1)])
        #expect(monitor.tick(now: 10.5).isEmpty, "one check at a time")
        #expect(monitor.failed(number: 1, "boom", now: 11).isEmpty)
        #expect(monitor.consecutiveFailures == 1)
        #expect(monitor.nextWake == 21)
        #expect(monitor.tick(now: 21) == [.runCheck(number: 2)])
        #expect(monitor.succeeded(number: 2, now: 21.1).isEmpty)
        #expect(monitor.consecutiveFailures == 0)
        #expect(monitor.nextWake == 31.1)
    }

    @Test("three failures in a row make the replica unhealthy, with the last error")
    func threeStrikes() {
        var monitor = HealthMonitor(configuration: self.config, now: 0)
        var now = 0.0
        var verdict: [HealthMonitor.Directive] = []
        for number in 1...3 {
            now = monitor.nextWake!
            #expect(monitor.tick(now: now) == [.runCheck(number: number)])
            verdict = monitor.failed(number: number, "error \(number)", now: now + 1)
        }
        #expect(verdict == [.unhealthy(reason: "failed 3 health checks in a row; last: error 3")])
        #expect(monitor.isUnhealthy)
        #expect(monitor.nextWake == nil)
        #expect(monitor.tick(now: 1000).isEmpty, "UNHEALTHY is final")
    }

    @Test("a check slower than the timeout fails; its late answer is ignored")
    func timeout() {
        var monitor = HealthMonitor(configuration: HealthMonitor.Configuration(period: 1, timeout: 2), now: 0)
        #expect(monitor.tick(now: 1) == [.runCheck(number: 1)])
        #expect(monitor.nextWake == 3)
        #expect(monitor.tick(now: 2.9).isEmpty)
        #expect(monitor.tick(now: 3).isEmpty)
        #expect(monitor.consecutiveFailures == 1)
        #expect(monitor.lastError.contains("did not answer within 2.0 s"))
        #expect(monitor.succeeded(number: 1, now: 3.5).isEmpty)
        #expect(monitor.consecutiveFailures == 1, "the late pass does not count")
        // Two more hung checks: unhealthy.
        #expect(monitor.tick(now: 4) == [.runCheck(number: 2)])
        #expect(monitor.tick(now: 6).isEmpty)
        #expect(monitor.tick(now: 7) == [.runCheck(number: 3)])
        #expect(
            monitor.tick(now: 9) == [
                .unhealthy(
                    reason: "failed 3 health checks in a row; last: the health check did not answer within 2.0 s"
                )
            ]
        )
    }

    @Test("flaky checks that never fail three times in a row keep the replica")
    func flaky() {
        var monitor = HealthMonitor(configuration: HealthMonitor.Configuration(period: 1, timeout: 1), now: 0)
        var generator = SeededGenerator(seed: 3)
        var streak = 0
        for number in 1...500 {
            let now = monitor.nextWake!
            #expect(monitor.tick(now: now) == [.runCheck(number: number)])
            let fail = streak < 2 && Bool.random(using: &generator)
            if fail {
                streak += 1
                #expect(monitor.failed(number: number, "flaky", now: now + 0.1).isEmpty)
            } else {
                streak = 0
                #expect(monitor.succeeded(number: number, now: now + 0.1).isEmpty)
            }
        }
        #expect(!monitor.isUnhealthy)
    }

    @Test("start failures back off 0.5, 1, 2 … s up to 30 s; UNHEALTHY from the third; RUNNING resets")
    func startBackoff() {
        var backoff = StartBackoff()
        #expect(backoff.mayStart(now: 0))
        var now = 0.0
        var delays: [Double] = []
        for attempt in 1...9 {
            backoff.startFailed("exit \(attempt)", now: now)
            delays.append(backoff.retryAfter! - now)
            #expect(!backoff.mayStart(now: now + delays.last! - 0.01))
            #expect(backoff.mayStart(now: now + delays.last!))
            #expect(backoff.isUnhealthy == (attempt >= 3))
            now += delays.last!
        }
        #expect(delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        #expect(backoff.lastError == "exit 9")
        backoff.reset()
        #expect(!backoff.isUnhealthy && backoff.mayStart(now: 0) && backoff.consecutiveFailures == 0)
    }
}

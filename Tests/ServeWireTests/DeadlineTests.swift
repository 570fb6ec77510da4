import NIOConcurrencyHelpers
import ServeWire
import Testing

@Suite("Deadlines")
struct DeadlineTests {
    struct Failed: Error {}

    @Test("withDeadline: the work's value or error when it ends first; DeadlineExceeded and a cancelled work when the deadline does")
    func cooperative() async throws {
        #expect(try await withDeadline(after: .seconds(10)) { 42 } == 42)
        await #expect(throws: Failed.self) { try await withDeadline(after: .seconds(10)) { throw Failed() } }
        let cancelled = NIOLockedValueBox(false)
        await #expect(throws: DeadlineExceeded.self) {
            try await withDeadline(after: .milliseconds(20)) {
                do { try await Task.sleep(for: .seconds(60)) } catch { cancelled.withLockedValue { $0 = true } }
            }
        }
        #expect(cancelled.withLockedValue { $0 })
        #expect(try await withDeadline(after: nil) { "no deadline" } == "no deadline")
    }

    @Test("withDeadline(abandoningAfter:): work that ignores cancellation does not hold the caller past the deadline")
    func abandoning() async throws {
        #expect(try await withDeadline(abandoningAfter: .seconds(10)) { 7 } == 7)
        await #expect(throws: Failed.self) { try await withDeadline(abandoningAfter: .seconds(10)) { throw Failed() } }
        // The work waits on a continuation that cancellation does not touch, resumed only after
        // the caller has its answer: a deadline that waited for the work would never return.
        let parked = NIOLockedValueBox<CheckedContinuation<Void, Never>?>(nil)
        await #expect(throws: DeadlineExceeded.self) {
            try await withDeadline(abandoningAfter: .milliseconds(20)) {
                await withCheckedContinuation { continuation in parked.withLockedValue { $0 = continuation } }
            }
        }
        while parked.withLockedValue({ $0 }) == nil { try await Task.sleep(for: .milliseconds(1)) }
        parked.withLockedValue { $0 }?.resume()
    }
}

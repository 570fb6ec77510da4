import Testing

@testable import ServeCore

@Suite("Process replica port race")
struct ChildPortRaceTests {
    @Test("a port taken by another process is retried on a new port, at most maxAttempts in all")
    func retriesBounded() {
        #expect(ChildPortRace.decide(attempt: 1, outcome: .ready) == .ready)
        #expect(
            ChildPortRace.decide(attempt: 1, outcome: .portTaken(port: 4242))
                == .retry(reason: "another process took port 4242 before the replica's process could listen on it"))
        #expect(ChildPortRace.decide(attempt: 2, outcome: .portTaken(port: 4243)) != .fail(""))
        #expect(
            ChildPortRace.decide(attempt: ChildPortRace.maxAttempts, outcome: .portTaken(port: 4244))
                == .fail("another process took port 4244 before the replica's process could listen on it, 3 times in a row"))
    }

    @Test("a child that fails for its own reasons is not retried here (the head's start backoff handles it)")
    func ownFailuresNotRetried() {
        #expect(ChildPortRace.decide(attempt: 1, outcome: .failed("exited with status 1")) == .fail("exited with status 1"))
    }
}

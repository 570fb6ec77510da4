import Testing

@testable import ServeCore

@Suite("Power of two choices")
struct RouterTests {
    @Test("never picks a replica whose in-flight count reached max_ongoing_requests")
    func neverPicksFull() {
        var generator = SeededGenerator(seed: 7)
        for _ in 0..<500 {
            let replicas = (0..<5).map { index in
                ReplicaLoadView(
                    id: "r\(index)",
                    inFlight: Int.random(in: 0...4, using: &generator),
                    reported: Int.random(in: 0...8, using: &generator),
                    maxOngoing: 4
                )
            }
            let choice = PowerOfTwoChoices.choose(replicas, using: &generator)
            if replicas.allSatisfy({ $0.inFlight >= $0.maxOngoing }) {
                #expect(choice == nil)
            } else if let index = choice {
                #expect(replicas[index].inFlight < 4)
            } else {
                Issue.record("no replica chosen although one had room: \(replicas)")
            }
        }
    }

    @Test("none, one or a full set")
    func smallCases() {
        var generator = SeededGenerator(seed: 1)
        #expect(PowerOfTwoChoices.choose([], using: &generator) == nil)
        let full = ReplicaLoadView(id: "full", inFlight: 5, reported: 0, maxOngoing: 5)
        let free = ReplicaLoadView(id: "free", inFlight: 0, reported: 9, maxOngoing: 5)
        #expect(PowerOfTwoChoices.choose([full, full], using: &generator) == nil)
        for _ in 0..<20 {
            #expect(PowerOfTwoChoices.choose([full, free, full], using: &generator) == 1)
        }
    }

    @Test("sequential requests spread over all replicas")
    func spreads() {
        var generator = SeededGenerator(seed: 42)
        let replicas = (0..<5).map { ReplicaLoadView(id: "r\($0)", maxOngoing: 5) }
        var picks = Array(repeating: 0, count: replicas.count)
        for _ in 0..<1000 {
            picks[PowerOfTwoChoices.choose(replicas, using: &generator)!] += 1
        }
        #expect(picks.allSatisfy { $0 > 120 }, "picks: \(picks)")
    }

    @Test("prefers the lower load, counting both in-flight and reported")
    func prefersLowerLoad() {
        var generator = SeededGenerator(seed: 3)
        let pair = [
            ReplicaLoadView(id: "busy", inFlight: 0, reported: 4, maxOngoing: 5),
            ReplicaLoadView(id: "idle", inFlight: 1, reported: 0, maxOngoing: 5),
        ]
        for _ in 0..<50 {
            #expect(PowerOfTwoChoices.choose(pair, using: &generator) == 1)
        }
        // With three, the least loaded one wins whenever it is drawn: two thirds of the time.
        let three = [
            ReplicaLoadView(id: "a", inFlight: 3, maxOngoing: 10),
            ReplicaLoadView(id: "b", inFlight: 0, maxOngoing: 10),
            ReplicaLoadView(id: "c", inFlight: 3, maxOngoing: 10),
        ]
        var idleChosen = 0
        for _ in 0..<900 where PowerOfTwoChoices.choose(three, using: &generator) == 1 {
            idleChosen += 1
        }
        #expect((540...660).contains(idleChosen))
    }

    @Test("ties go to the first draw")
    func tiesToFirstDraw() {
        let replicas = (0..<4).map { ReplicaLoadView(id: "r\($0)", inFlight: 1, maxOngoing: 5) }
        var generator = SeededGenerator(seed: 99)
        for _ in 0..<100 {
            var replay = generator
            let firstDraw = Int.random(in: 0..<4, using: &replay)
            #expect(PowerOfTwoChoices.choose(replicas, using: &generator) == firstDraw)
        }
    }

    @Test("the seeded generator repeats")
    func seededGenerator() {
        var a = SeededGenerator(seed: 5)
        var b = SeededGenerator(seed: 5)
        #expect((0..<10).map { _ in a.next() } == (0..<10).map { _ in b.next() })
    }
}

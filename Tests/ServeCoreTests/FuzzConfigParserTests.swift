import Foundation
import Testing

@testable import ServeCore

/// How much fuzzing a run does: `FUZZ_ITERATIONS` inputs per parser (CI: the default;
/// `make fuzz`: more), from `FUZZ_SEED`, so a failure repeats exactly with the seed it prints.
enum FuzzSettings {
    static var iterations: Int {
        ProcessInfo.processInfo.environment["FUZZ_ITERATIONS"].flatMap(Int.init) ?? 100_000
    }

    static var seed: UInt64 {
        ProcessInfo.processInfo.environment["FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x5EED_C0F1
    }

    /// The inputs are cut into this many parts run side by side, part `p` from seed `seed + p`:
    /// a fixed number, so a seed means the same inputs on any machine.
    static let parts = 2

    /// Runs `body(part, inputs)` for each part on its own thread; returns what they return.
    static func inParallel<Result: Sendable>(
        _ iterations: Int, _ body: @escaping @Sendable (Int, Range<Int>) -> Result
    ) -> [Result] {
        let collected = Collected<Result>()
        DispatchQueue.concurrentPerform(iterations: self.parts) { part in
            let range = (iterations * part / self.parts)..<(iterations * (part + 1) / self.parts)
            collected.add(part, body(part, range))
        }
        return collected.inOrder
    }
}

/// Results of parallel parts, by part number.
final class Collected<Result: Sendable>: @unchecked Sendable {  // every access under `lock`
    private let lock = NSLock()
    private var results: [(Int, Result)] = []

    func add(_ part: Int, _ result: Result) {
        self.lock.withLock { self.results.append((part, result)) }
    }

    var inOrder: [Result] {
        self.lock.withLock { self.results.sorted { $0.0 < $1.0 }.map(\.1) }
    }
}

/// The config parser (YAML and JSON, then every validation rule) fed random and mutated text:
/// it must never crash or hang; every input is either a config, which must survive the state
/// dir's write-and-read-back unchanged, or a refusal that names at least one problem.
@Suite("Fuzz: config parser")
struct FuzzConfigParserTests {
    static let handlers: Set<String> = ["echo", "sleep", "cpu", "env"]

    /// Small, varied seeds: both syntaxes, every section, aliases, flow and block style.
    static let seeds: [String] = {
        var seeds = [
            designExample,
            "applications:\n  - name: a\n    route_prefix: /a\n    deployments:\n      - name: A\n        handler: echo\n        num_replicas: 2\n",
            "http_options: {port: 8000, max_body_bytes: 1024}\napplications: [{name: b, deployments: [{name: B, handler: sleep, num_replicas: auto, user_config: {ms: 5}}]}]\n",
            "applications:\n- name: c\n  deployments:\n  - name: C\n    command: [python3, m.py]\n    health_path: /h\n    autoscaling_config: {min_replicas: 0, max_replicas: 3, target_num_ongoing_requests_per_replica: 2}\n    actor_options: {num_cpus: 0.5, resources: {r: 1}, runtime_env: {env_vars: {X: \"1\"}}}\n",
            #"{"applications": [{"name": "d", "route_prefix": "/d", "deployments": [{"name": "D", "handler": "env", "max_ongoing_requests": 3, "placement_strategy": "SPREAD", "max_replicas_per_node": 1}]}]}"#,
            "applications: []\n",
        ]
        var generator = SeededGenerator(seed: 7)
        for _ in 0..<2 {
            seeds.append(RandomConfig.make(maxApplications: 1, maxDeployments: 1, using: &generator).jsonValue.jsonString())
        }
        return seeds
    }()

    /// Pieces of YAML and JSON syntax, and values that sit on the rules' edges.
    static let dictionary: [String] = [
        ":", ": ", "- ", "-", "{", "}", "[", "]", ",", "\"", "'", "#", "&a ", "*a", "!!str ", "!!int ", "!!binary ",
        "? ", "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "<<: ", "\t", "\n", "\n  ", "\n    - ", "\r\n", "\u{FEFF}",
        "null", "~", "true", "no", "0", "-1", "1e309", "-0.0", "0x1F", "0o17", ".inf", ".nan", "9007199254740993",
        "auto", "\"auto\"", "applications", "deployments", "name", "handler", "command", "num_replicas",
        "autoscaling_config", "min_replicas", "max_replicas", "ray_actor_options", "num_gpus", "resources", "env_vars",
        "route_prefix", "/", "http_options", "max_body_bytes", "\\u0000", "\\ud800", "\u{0}", "é", "😀",
    ]

    @Test("random and mutated YAML and JSON: a config that reads back unchanged, or a refusal naming its problems")
    func fuzz() throws {
        let iterations = FuzzSettings.iterations
        let seed = FuzzSettings.seed
        struct Outcome: Sendable {
            var accepted = 0
            var refused = 0
            var failures: [String] = []
            var slowest: (Duration, String) = (.zero, "")
        }
        let outcomes = FuzzSettings.inParallel(iterations) { (part: Int, inputs: Range<Int>) -> Outcome in
            var generator = SeededGenerator(seed: seed &+ UInt64(part))
            var outcome = Outcome()
            let clock = ContinuousClock()
            for iteration in inputs {
                let text = Self.input(iteration, using: &generator)
                let start = clock.now
                do {
                    let config = try ConfigParser.parse(text, knownHandlers: Self.handlers)
                    outcome.accepted += 1
                    let back = try ConfigParser.parse(config.jsonValue.jsonString(), knownHandlers: nil)
                    if back != config {
                        outcome.failures.append("seed \(seed), input \(iteration): accepted but did not read back unchanged:\n\(text)")
                    }
                } catch {
                    outcome.refused += 1
                    let problems = (error as? ConfigError)?.problems ?? []
                    if problems.isEmpty || problems.contains(where: { $0.message.isEmpty }) {
                        outcome.failures.append("seed \(seed), input \(iteration): refused without a problem named:\n\(text)")
                    }
                }
                let took = clock.now - start
                if took > outcome.slowest.0 { outcome.slowest = (took, text) }
            }
            return outcome
        }
        for failure in outcomes.flatMap(\.failures).prefix(20) { Issue.record(Comment(rawValue: failure)) }
        let accepted = outcomes.map(\.accepted).reduce(0, +)
        let refused = outcomes.map(\.refused).reduce(0, +)
        let slowest = outcomes.map(\.slowest).max { $0.0 < $1.0 } ?? (.zero, "")
        print("config fuzz: \(iterations) inputs (seed \(seed)): \(accepted) accepted, \(refused) refused; slowest \(slowest.0)")
        #expect(accepted > 0 && refused > 0, "the inputs should reach both outcomes")
        #expect(slowest.0 < .seconds(2), "a \(slowest.1.utf8.count)-byte input took \(slowest.0)")
    }

    @Test("nesting far past any config is refused with a message, not a stack overflow")
    func deepNesting() {
        for text in [
            String(repeating: "[", count: 200_000), String(repeating: "{a: ", count: 100_000),
            String(repeating: "- ", count: 100_000) + "x", "applications: " + String(repeating: "[", count: 100_000),
            (0..<2_000).map { String(repeating: " ", count: $0) + "k:" }.joined(separator: "\n"),
            String(repeating: "a:\n- ", count: 50_000),
        ] {
            let start = ContinuousClock.now
            let error = #expect(throws: ConfigError.self, "\(text.prefix(20))…") {
                try ConfigParser.parse(text, knownHandlers: Self.handlers)
            }
            print("\(text.utf8.count) bytes, \(ContinuousClock.now - start): \(error.map { "\($0)" } ?? "-")")
        }
    }

    static func input(_ iteration: Int, using generator: inout SeededGenerator) -> String {
        switch iteration % 8 {
        case 0, 1, 2, 3:
            var bytes = Array(self.seeds.randomElement(using: &generator)!.utf8)
            for _ in 0..<Int.random(in: 1...6, using: &generator) { self.mutate(&bytes, using: &generator) }
            return String(decoding: bytes, as: UTF8.self)
        case 4:
            let first = Array(self.seeds.randomElement(using: &generator)!.utf8)
            let second = Array(self.seeds.randomElement(using: &generator)!.utf8)
            let cut = Int.random(in: 0...first.count, using: &generator)
            let from = Int.random(in: 0...second.count, using: &generator)
            return String(decoding: first[..<cut] + second[from...], as: UTF8.self)
        case 5:
            return (0..<Int.random(in: 1...40, using: &generator)).map { _ in
                self.dictionary.randomElement(using: &generator)!
            }.joined()
        case 6:
            let length = Int.random(in: 0...120, using: &generator)
            return String(decoding: (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }, as: UTF8.self)
        default:
            // A valid config with one value swapped for one of another kind or out of range.
            var config = RandomConfig.make(maxApplications: 1, maxDeployments: 2, using: &generator).jsonValue
            config = self.perturb(config, using: &generator)
            return config.jsonString()
        }
    }

    static func mutate(_ bytes: inout [UInt8], using generator: inout SeededGenerator) {
        let position = Int.random(in: 0...bytes.count, using: &generator)
        switch Int.random(in: 0..<6, using: &generator) {
        case 0 where !bytes.isEmpty:
            bytes[min(position, bytes.count - 1)] = UInt8.random(in: 0...255, using: &generator)
        case 1:
            bytes.insert(contentsOf: Array(self.dictionary.randomElement(using: &generator)!.utf8), at: position)
        case 2:
            let end = min(bytes.count, position + Int.random(in: 1...16, using: &generator))
            bytes.removeSubrange(position..<end)
        case 3:
            let end = min(bytes.count, position + Int.random(in: 1...32, using: &generator))
            bytes.insert(contentsOf: Array(bytes[position..<end]), at: position)
        case 4:
            bytes.removeSubrange(position...)
        default:
            bytes.insert([UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\t")].randomElement(using: &generator)!, at: position)
        }
    }

    static func perturb(_ value: JSONValue, using generator: inout SeededGenerator) -> JSONValue {
        let replacements: [JSONValue] = [
            .null, .bool(true), .number(-1), .number(0), .number(0.5), .number(1e300), .string(""), .string("x"),
            .string("auto"), .array([]), .object([:]), .object(["unknown_field": 1]),
        ]
        switch value {
        case .object(var members) where !members.isEmpty && Int.random(in: 0..<4, using: &generator) > 0:
            let key = members.keys.sorted().randomElement(using: &generator)!
            members[key] = self.perturb(members[key]!, using: &generator)
            return .object(members)
        case .array(var items) where !items.isEmpty && Int.random(in: 0..<4, using: &generator) > 0:
            let index = Int.random(in: 0..<items.count, using: &generator)
            items[index] = self.perturb(items[index], using: &generator)
            return .array(items)
        default:
            return replacements.randomElement(using: &generator)!
        }
    }
}

/// An amount of one logical resource (CPUs, GPUs, bytes of memory, a custom resource), held in
/// fixed point.
///
/// The guide's "Fractional CPUs and Fractional GPUs" lets two replicas share a GPU at 0.5 each,
/// and Ray accounts for such fractions with four decimal places. In binary floating point
/// 0.1 × 10 is not 1 and 0.3 + 0.3 + 0.3 + 0.1 is not 1 either, so a node that "has exactly one
/// GPU free" would refuse the tenth 0.1 replica. Counting ten-thousandths in an `Int64` makes the
/// sums exact (DESIGN.md "Scheduling and resources": "use fixed point, not Double").
public struct ResourceQuantity: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// Units per whole resource: four decimal places, as Ray's resource accounting has, and the
    /// `_e4` of the protobuf's `quantities_e4`.
    public static let scale: Int64 = 10_000

    /// The amount × `scale`.
    public var units: Int64

    public init(units: Int64) {
        self.units = units
    }

    /// Rounds to the nearest unit (0.00005 and up rounds away from zero); NaN is zero and
    /// amounts beyond what `Int64` holds saturate rather than trap, since this is fed from
    /// user input.
    public init(_ amount: Double) {
        let scaled = (amount * Double(Self.scale)).rounded(.toNearestOrAwayFromZero)
        if scaled.isNaN {
            self.units = 0
        } else if scaled >= 9_223_372_036_854_775_807.0 {
            self.units = .max
        } else if scaled <= -9_223_372_036_854_775_808.0 {
            self.units = .min
        } else {
            self.units = Int64(scaled)
        }
    }

    /// A whole amount (`integer` CPUs, bytes, …).
    public init(integer: Int64) {
        self.units = integer * Self.scale
    }

    public static let zero = ResourceQuantity(units: 0)

    /// The amount as a `Double`, for display and JSON; never for arithmetic that must be exact.
    public var doubleValue: Double {
        Double(self.units) / Double(Self.scale)
    }

    /// The whole part, rounded toward zero (`1.5` → 1): how many threads `num_cpus` allows.
    public var integerPart: Int64 {
        self.units / Self.scale
    }

    public static func + (lhs: ResourceQuantity, rhs: ResourceQuantity) -> ResourceQuantity {
        ResourceQuantity(units: lhs.units + rhs.units)
    }

    public static func - (lhs: ResourceQuantity, rhs: ResourceQuantity) -> ResourceQuantity {
        ResourceQuantity(units: lhs.units - rhs.units)
    }

    public static func += (lhs: inout ResourceQuantity, rhs: ResourceQuantity) {
        lhs.units += rhs.units
    }

    public static func -= (lhs: inout ResourceQuantity, rhs: ResourceQuantity) {
        lhs.units -= rhs.units
    }

    /// `count` replicas' worth of a per-replica amount.
    public static func * (lhs: ResourceQuantity, rhs: Int) -> ResourceQuantity {
        ResourceQuantity(units: lhs.units * Int64(rhs))
    }

    public static func < (lhs: ResourceQuantity, rhs: ResourceQuantity) -> Bool {
        lhs.units < rhs.units
    }

    /// Plain decimal without trailing zeros or an exponent ("1", "0.5", "0.1", "2147483648"),
    /// so that messages such as "needs GPU 0.5" read as the user wrote the config.
    public var description: String {
        let magnitude = self.units.magnitude
        let scale = UInt64(Self.scale)
        let whole = magnitude / scale
        var fraction = magnitude % scale
        let sign = self.units < 0 ? "-" : ""
        guard fraction != 0 else { return "\(sign)\(whole)" }
        var digits = 4
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let fractionText = String(fraction)
        let padding = String(repeating: "0", count: digits - fractionText.count)
        return "\(sign)\(whole).\(padding)\(fractionText)"
    }

    /// Encoded as a plain JSON number (`0.5`, `2`), as the status and nodes JSON show resources.
    /// Decoding rounds to the nearest unit, which restores every encoded value exactly.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        self.init(try container.decode(Double.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if self.units % Self.scale == 0 {
            try container.encode(self.units / Self.scale)
        } else {
            try container.encode(self.doubleValue)
        }
    }
}

extension ResourceQuantity: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral {
    public init(integerLiteral value: Int64) {
        self.init(integer: value)
    }

    public init(floatLiteral value: Double) {
        self.init(value)
    }
}

/// A bag of named resource quantities: what a replica demands, what a node has in total, or
/// what it has free.
///
/// Names follow Ray: `CPU`, `GPU`, `memory` (bytes), custom names from
/// `ray_actor_options.resources`, and `accelerator_type:NAME`, which a node of that accelerator
/// type offers with quantity 1 and a replica with `accelerator_type: NAME` demands (the guide's
/// "Custom Resources, Accelerator types, and more").
///
/// Zero quantities are never stored, so two sets that differ only by explicit zeros are equal.
public struct ResourceSet: Sendable, Hashable, CustomStringConvertible {
    public static let cpu = "CPU"
    public static let gpu = "GPU"
    public static let memory = "memory"

    /// The resource that marks a node's accelerator type, as Ray names it.
    public static func acceleratorKey(_ type: String) -> String {
        "accelerator_type:\(type)"
    }

    private var storage: [String: ResourceQuantity]

    /// Every non-zero quantity by name; zero entries assigned here are dropped.
    public var quantities: [String: ResourceQuantity] {
        get { self.storage }
        set { self.storage = newValue.filter { $0.value != .zero } }
    }

    public init(_ quantities: [String: ResourceQuantity] = [:]) {
        self.storage = quantities.filter { $0.value != .zero }
    }

    /// From the protobuf's `quantities_e4` (units of 1/10,000).
    public init(quantitiesE4: [String: Int64]) {
        self.init(quantitiesE4.mapValues { ResourceQuantity(units: $0) })
    }

    /// For the protobuf's `quantities_e4` (units of 1/10,000).
    public var quantitiesE4: [String: Int64] {
        self.storage.mapValues(\.units)
    }

    /// A missing name reads as zero; writing zero removes the name.
    public subscript(name: String) -> ResourceQuantity {
        get { self.storage[name] ?? .zero }
        set {
            if newValue == .zero {
                self.storage.removeValue(forKey: name)
            } else {
                self.storage[name] = newValue
            }
        }
    }

    public var isEmpty: Bool {
        self.storage.isEmpty
    }

    /// Whether every resource this set asks for is there in `available` (exact, fixed point:
    /// 0.5 + 0.5 GPU fits one GPU).
    public func fits(in available: ResourceSet) -> Bool {
        self.storage.allSatisfy { name, needed in needed <= available[name] }
    }

    public func adding(_ other: ResourceSet) -> ResourceSet {
        var result = self
        for (name, quantity) in other.storage {
            result[name] = result[name] + quantity
        }
        return result
    }

    /// May go negative for names `other` has more of; callers subtract only what fitted.
    public func subtracting(_ other: ResourceSet) -> ResourceSet {
        var result = self
        for (name, quantity) in other.storage {
            result[name] = result[name] - quantity
        }
        return result
    }

    /// What `self` needs that `available` lacks, in `orderedNames` order (CPU, GPU, memory,
    /// then alphabetical): e.g. `[("GPU", needed 0.5, available 0.25)]`. Empty when `self` fits.
    public func shortfall(
        in available: ResourceSet
    ) -> [(name: String, needed: ResourceQuantity, available: ResourceQuantity)] {
        self.orderedNames.compactMap { name in
            let needed = self[name]
            let have = available[name]
            return needed > have ? (name: name, needed: needed, available: have) : nil
        }
    }

    /// The names present, in the order people read resources: `CPU`, `GPU`, `memory`, then the
    /// rest alphabetically.
    public var orderedNames: [String] {
        self.storage.keys.sorted(by: Self.displayOrder)
    }

    /// The entries in `orderedNames` order, for status output.
    public var orderedEntries: [(name: String, quantity: ResourceQuantity)] {
        self.orderedNames.map { (name: $0, quantity: self.storage[$0]!) }
    }

    /// "CPU: 1, GPU: 0.5, memory: 2147483648"; an empty set is "".
    public var description: String {
        self.orderedEntries.map { "\($0.name): \($0.quantity)" }.joined(separator: ", ")
    }

    /// Orders resource names CPU, GPU, memory first, then by plain string order.
    static func displayOrder(_ lhs: String, _ rhs: String) -> Bool {
        let lhsRank = Self.rank(lhs)
        let rhsRank = Self.rank(rhs)
        return lhsRank != rhsRank ? lhsRank < rhsRank : lhs < rhs
    }

    private static func rank(_ name: String) -> Int {
        switch name {
        case Self.cpu: 0
        case Self.gpu: 1
        case Self.memory: 2
        default: 3
        }
    }
}

extension ResourceSet: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, ResourceQuantity)...) {
        var quantities: [String: ResourceQuantity] = [:]
        for (name, quantity) in elements {
            quantities[name, default: .zero] += quantity
        }
        self.init(quantities)
    }
}

/// Encoded as a JSON object of plain numbers (`{"CPU": 2, "GPU": 0.5}`), the nodes JSON's
/// `resources_total` shape.
extension ResourceSet: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        self.init(try container.decode([String: ResourceQuantity].self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.storage)
    }
}

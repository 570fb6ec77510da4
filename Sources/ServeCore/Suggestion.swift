/// "Did you mean …?" for a misspelt field or handler name: the closest known name by edit
/// distance, when it is close enough to be a plausible typo.
enum Suggestion {
    /// The known name nearest to `word` (ties go to the earlier name), if within two edits, or a
    /// quarter of the word's length for long names (`target_num_ongoing_requests` →
    /// `target_ongoing_requests`), so unrelated names (`grpc_options`, `http_options`) are not
    /// offered as typos of each other.
    static func closest(to word: String, in candidates: [String]) -> String? {
        let lowered = word.lowercased()
        var best: (name: String, distance: Int)?
        for candidate in candidates {
            let distance = Self.editDistance(lowered, candidate.lowercased())
            if distance < (best?.distance ?? .max) {
                best = (candidate, distance)
            }
        }
        guard let best else { return nil }
        let allowed = max(2, word.count / 4)
        return best.distance <= allowed && best.distance < max(word.count, best.name.count) ? best.name : nil
    }

    /// Levenshtein distance (insertions, deletions, substitutions), over characters.
    static func editDistance(_ lhs: String, _ rhs: String) -> Int {
        let a = Array(lhs)
        let b = Array(rhs)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = Array(repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/**
 * Remembers the last answer to each request with its ETag, so a repeated
 * request sends `If-None-Match` and a 304 reuses the remembered body.
 *
 * Bounded (least recently used entries go first). In a browser the ETag is
 * only readable when the API exposes it through CORS; until then the cache
 * stays empty there and the browser's own HTTP cache revalidates GETs.
 */

export interface CachedAnswer {
  etag: string;
  body: unknown;
}

export class EtagCache {
  private readonly entries = new Map<string, CachedAnswer>();

  constructor(readonly maxEntries: number = 200) {}

  get(key: string): CachedAnswer | undefined {
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, hit);
    }
    return hit;
  }

  set(key: string, answer: CachedAnswer): void {
    this.entries.delete(key);
    this.entries.set(key, answer);
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest === undefined) break;
      this.entries.delete(oldest);
    }
  }

  get size(): number {
    return this.entries.size;
  }

  clear(): void {
    this.entries.clear();
  }
}

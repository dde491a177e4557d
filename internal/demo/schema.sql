-- The demo: cinemas with venues, events in venue auditoriums, and snapshots of seat states.
CREATE TABLE cinema (
    id   bigint PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE venue (
    id               bigint PRIMARY KEY,
    cinema_id        bigint NOT NULL REFERENCES cinema,
    name             text NOT NULL,
    -- materialized by matcol
    cinema_name      text,
    auditorium_count int,
    seat_count       bigint,
    materialized_at  timestamptz
);
CREATE INDEX venue_stale ON venue (id) WHERE materialized_at IS NULL;
CREATE INDEX ON venue (cinema_id);

CREATE TABLE event (
    id            bigint PRIMARY KEY,
    venue_id      bigint NOT NULL,
    auditorium_id int NOT NULL,
    seat_count    int NOT NULL,
    start_time    timestamptz NOT NULL
);
CREATE INDEX ON event (venue_id);

CREATE TABLE event_seat_state_change (
    id              bigint PRIMARY KEY,
    event_id        bigint NOT NULL,
    changed_at      timestamptz NOT NULL DEFAULT now(),
    -- materialized by matcol
    sold_count      int,
    reserved_count  int,
    empty_count     int,
    materialized_at timestamptz
);
CREATE INDEX esc_stale ON event_seat_state_change (id) WHERE materialized_at IS NULL;

CREATE TABLE seat_state (
    change_id bigint NOT NULL,
    seat_id   int NOT NULL,
    state     text NOT NULL CHECK (state IN ('SOLD', 'RESERVED', 'EMPTY')),
    PRIMARY KEY (change_id, seat_id)
);

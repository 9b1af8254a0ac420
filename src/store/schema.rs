//! Diesel's view of the tables in `migrations/`, shared by both backends:
//! every column type here (BigInt, Integer, Text) means the same on each.

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> BigInt,
        token_generation -> BigInt,
        disabled_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    conversations (id) {
        id -> BigInt,
        owner_id -> BigInt,
        bot -> Text,
        title -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        conversation_id -> BigInt,
        role -> Text,
        content -> Text,
        status -> Text,
        client_msg_id -> Nullable<Text>,
        reply_to -> Nullable<BigInt>,
        prompt_tokens -> Nullable<Integer>,
        completion_tokens -> Nullable<Integer>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    revoked_tokens (jti) {
        jti -> Text,
        user_id -> BigInt,
        expires_at -> BigInt,
    }
}

diesel::table! {
    turn_leases (message_id) {
        message_id -> BigInt,
        user_id -> BigInt,
        holder -> Text,
        expires_at -> BigInt,
    }
}

diesel::table! {
    rate_windows (subject, window_start) {
        subject -> Text,
        window_start -> BigInt,
        hits -> Integer,
    }
}

diesel::joinable!(conversations -> users (owner_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    conversations,
    messages,
    revoked_tokens,
    turn_leases,
    rate_windows
);

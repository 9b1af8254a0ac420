DROP TRIGGER messages_touch_conversation ON messages;
DROP FUNCTION messages_touch_conversation();
